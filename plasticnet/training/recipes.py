"""Named sets of training options (`plasticnet train --recipe NAME`).

A recipe replaces option defaults; options given explicitly on the command line win over it.
`model_options` go to PlasticResNet as keyword arguments (the network's shape options have
no flags of their own). See docs/reproducing-plasticnet.md for
how each setting maps to the original PlasticNet (2020) code.
"""

# The original's training script: Adam at 1e-3, batch 50, 10 epochs, no augmentation and no
# label smoothing, constant lr, test accuracy every 30 steps.
_PLASTICNET_2020_TRAINING = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "batch_size": 50,
    "epochs": 10,
    "augment": False,
    "cutout": 0,
    "label_smoothing": 0.0,
    "tta": False,
    "eval_every_steps": 30,
    "base_width": 64,
}

RECIPES: dict[str, dict] = {
    "plasticnet-2020": {
        **_PLASTICNET_2020_TRAINING,
        "model": "plastic-resnet50",
        "stem": "imagenet",
        "budget": 15,
        "max_span": 1,
        # rewire every 500 steps: drop the one path with the smallest gate, regrow at random;
        # no rewiring in the last of the 10 epochs
        "drop": "gate",
        "grow": "random",
        "rewire_interval": 500,
        "rewire_end": 0.9,
        "drop_count": 1,
        "init": "random",
        # the original network: 7/10/16/7 positions per stage, every stage entered through a
        # stride-2 3x3 conv + BN on the trunk, 7x7/2 stem with a stride-1 max-pool, gates drawn
        # in [0, 1) and applied after each body's ReLU, no activation after the joins, and the
        # four stage-transition blocks present from the start
        "model_options": {
            "nodes_per_stage": [7, 10, 16, 7],
            "stage_strides": [2, 2, 2, 2],
            "stem_pool_stride": 1,
            "projection": "conv3x3",
            "gate_init": "uniform",
            "gate_position": "after_relu",
            "join_activation": "none",
            "initial_paths": "stage_transitions",
        },
    },
    "resnet50-2020": {
        **_PLASTICNET_2020_TRAINING,
        "model": "resnet50",
        "stem": "imagenet",
    },
}
