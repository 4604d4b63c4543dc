"""The plain reference loop under torchrun with gloo: what bench/gloo_train.py compares the trainer with.

The loop a user writes for data-parallel CLIP on CPUs: ``DistributedDataParallel`` around the model,
a ``DistributedSampler`` over the same dataset class (clipforge's ``PairDataset``: the same decoding,
crops and tokenizer), each rank's features gathered with their gradients
(``torch.distributed.nn.all_gather``) so the loss is the global batch's, the CLIP loss from
``F.cross_entropy``, AdamW; optionally under bf16 autocast. Rank 0 writes the samples/s of the last
epoch (all ranks' samples over its wall-clock, as the trainer's log counts it) to ``--out``.

    torchrun --nproc-per-node 2 bench/gloo_reference.py --config cfg.json --out rate.json [--bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path


def main() -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.nn as dist_nn
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    from clipforge.data.pairs import PairDataset, collate, read_pairs
    from clipforge.training.config import TrainConfig
    from clipforge.training.trainer import build_model, build_tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    pairs, _ = read_pairs(config.data.train, config.data.image_column, config.data.caption_column)
    tokenizer = build_tokenizer(config, [p.caption for p in pairs])
    torch.manual_seed(0)
    model = build_model(config, tokenizer).train()
    ddp = DistributedDataParallel(model)
    data = PairDataset(pairs, model.preprocess, tokenizer, train=True, seed=0)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(data, batch_size=config.batch_size // world, sampler=sampler, drop_last=True,
                        collate_fn=collate)
    opt = torch.optim.AdamW(ddp.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    rate = 0.0
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)
        dist.barrier()
        t0, seen = time.perf_counter(), 0
        for batch in loader:
            opt.zero_grad()
            with autocast:
                img, txt, scale = ddp(batch.images, batch.tokens)  # normalised features, exp(logit scale)
            img = torch.cat(dist_nn.all_gather(img.float()))
            txt = torch.cat(dist_nn.all_gather(txt.float()))
            logits = scale.float() * img @ txt.T
            labels = torch.arange(len(logits))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            loss.backward()
            opt.step()
            seen += len(batch) * world
        rate = seen / (time.perf_counter() - t0)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"samples_per_s": rate}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
