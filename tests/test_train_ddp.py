"Two-process DDP training on CPU (gloo): both processes end with the same weights."
import os, socket, sys, tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _worker(rank:int, world:int, port:int, out:str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from qualiclip.train import Trainer, TrainConfig, cleanup_distributed
    cfg = TrainConfig(backbone='qualiclip-tiny', pretrained=None, crop=64, batch_size=2, steps=3, lr=3e-4,
                      warmup_steps=1, val_every=3, ckpt_every=3, log_every=1, val_repeats=1, device='cpu',
                      progress=False, out=out)
    try:
        tr = Trainer(cfg)
        m = tr.fit()
        params = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        torch.save({'params': params, 'step': tr.step_no, 'loss': m['loss']}, Path(out)/f'rank{rank}.pt')
    finally: cleanup_distributed()


def test_ddp_two_processes_same_weights():
    out = tempfile.mkdtemp()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    r0 = torch.load(Path(out)/'rank0.pt', weights_only=True)
    r1 = torch.load(Path(out)/'rank1.pt', weights_only=True)
    assert r0['step'] == r1['step'] == 3
    assert r0['loss'] == r1['loss']  # the logged loss is the mean over both processes
    assert r0['params'].keys() == r1['params'].keys()
    for k in r0['params']: assert torch.equal(r0['params'][k], r1['params'][k]), k
    # the weights moved, and rank 0 wrote the run folder
    init = torch.load(Path(out)/'checkpoint.pt', weights_only=True)
    assert init['step'] == 3 and init['world_size'] == 2 and len(init['rng']) == 2
    assert (Path(out)/'qualiclip.pth').exists() and (Path(out)/'metrics.json').exists()
