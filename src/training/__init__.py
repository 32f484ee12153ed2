"""Lightning training of the Fashion-MNIST ResNet (no Prefect import): the trainer is
:func:`src.training.train.train_model`."""
