"""Directory for nnU-Net's ``nnUNet_extTrainer``: nnU-Net imports every module here as a top-level name.

Keep it tiny: only ``nnunet_swin_trainers.py`` (absolute imports, re-exports the trainers). The path is
printed by ``nnunet-swin ext-trainer-dir`` and added to ``nnUNet_extTrainer`` automatically at
interpreter start by the ``nnunet_swin_ext_trainer.pth`` file a ``pip install`` puts in site-packages.
"""
