"""Part 3's evaluation (style_transfer.py --evaluate), and the style judge Bonus B's evaluation shares.

The judge is a ResNet trained on the training split only (an architecture the generators never train
against), half of each batch seen through metrics.robust_transform, so that its hit rates read colour and
texture rather than pixel-level patterns.
"""
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import metrics
import runs
import wikiart

JUDGE_LR = 0.003


def train_judge(images_u8, labels, train_idx, num_styles, width, epochs, seed, device):
    """A style judge (ResNet of `width`, eval mode) trained `epochs` epochs on images_u8[train_idx]."""
    torch.manual_seed(seed)
    judge = wikiart.ResNet(num_styles, width, (1, 1, 1, 1), 0.1).to(device)
    labels = torch.as_tensor(labels)
    robust = metrics.robust_transform(np.asarray(images_u8))
    bs = runs.fit_batch_size(64, len(train_idx), "the style judge's batch size")
    steps = len(train_idx) // bs
    opt = wikiart.make_optimizer(judge, JUDGE_LR, 0.05)
    sched = wikiart.make_scheduler(opt, steps, epochs * steps)
    for epoch in range(epochs):
        order, g = runs.epoch_order(train_idx, seed + 1, epoch)
        judge.train()
        for i in tqdm(range(steps), desc=f"judge epoch {epoch + 1}/{epochs}", leave=False):
            idx = np.sort(order[i * bs:(i + 1) * bs])
            use_robust = (torch.rand(len(idx), generator=g) < 0.5).numpy()[:, None, None, None]
            x = wikiart.augment(wikiart.to_float(np.where(use_robust, robust[idx], images_u8[idx]), device), g, 0.5)
            runs.optimizer_step(F.cross_entropy(judge(x), labels[idx].to(device), label_smoothing=0.1), opt, sched)
    return judge.eval()


def judge_styles(judge, images_u8, device):
    """The judge's style (index) for each uint8 image."""
    return wikiart.predict(judge, images_u8, np.arange(len(images_u8)), 256, device, desc="judging").argmax(1).numpy()


def judge_features(judge, device):
    """u8 images -> (n, d) penultimate features of the judge: what RealismReference's Fréchet gap compares."""
    body = torch.nn.Sequential(judge.stem, judge.layers, judge.head)
    return lambda u8: wikiart.predict(body, u8, np.arange(len(u8)), 256, device, desc="judge features").numpy()
