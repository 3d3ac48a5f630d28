"""The on-disk checkpoint format, readable without megatron, DeepSpeed or a model.

    format.py            step directory names, the COMPLETE marker with checksums, the
                         atomic finalize (marker -> rename -> `latest`), listing, trainer state
    retention.py         which checkpoint is usable (Verdicts) and what pruning may delete
    dcp_metadata.py      torch.distributed.checkpoint's `.metadata` pickle, refused unless plain
    boxes.py             a shard as a box in a parameter's full shape; box intersections
    placements.py        which box (and flat range of it) of which global parameter each of
                         this rank's parameters holds, in any TP/PP/VPP/DP/ZeRO layout
    engine_state.py      the fp32 master, moments and step of each parameter, read from and
                         written into the local engine, DeepSpeed ZeRO-1/2 (and its bf16
                         optimizer) and ZeRO-3
    optimizer_state.py   layout-independent optimizer state: each rank saves what it holds
                         under global names and boxes; loading reads only what intersects
    errors.py            CheckpointError

`nextlat_pt.train.checkpoint` builds on it for what needs the model and the engine.
"""
