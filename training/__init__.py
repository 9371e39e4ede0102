"""Training the SpeechLM on a run's sealed exports: Stage I, II-a and II-b.

model   the encoder–adaptor–LLM–decoder SpeechLM (LLaMA-Omni2 layout) and its four parts
freeze  the one table of which parts each stage trains
chat    dialogues → token ids and labels (only assistant content is learnt)
data    sealed exports → the stage's examples, log-mel features, batches
run     hand-off to the Hugging Face Trainer, locally or inside Ray Train's TorchTrainer
"""
