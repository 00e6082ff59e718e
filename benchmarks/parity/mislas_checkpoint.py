"""Runs in the authors' torch environment (not ours): our stage-1 model as a
MiSLAS stage-1 checkpoint, and that checkpoint's test top-1 under MiSLAS's
own ResNet_fe, Classifier and test loader (the check that the conversion
is exact before MiSLAS's stage 2 starts from it).

  python mislas_checkpoint.py --code=DIR --arrays=F.npz --data=data.npz \\
      --num_classes=N --out=current.pth.tar --result=start.json

--code is the harness's edited MiSLAS copy; --arrays comes from
export.mislas_state_dicts (keys 'model.*' and 'classifier.*').
"""

import argparse
import json
import sys

import numpy as np
import torch


def state_dicts(arrays, model, classifier):
  """The two modules' state dicts from the exported arrays; PyTorch's BN
  counters, which MiSLAS never reads (momentum is set), start at 0."""
  out = {'model': {}, 'classifier': {}}
  for key in arrays.files:
    part, name = key.split('.', 1)
    out[part][name] = torch.from_numpy(np.ascontiguousarray(arrays[key]))
  for name, buf in model.state_dict().items():
    if name.endswith('num_batches_tracked'):
      out['model'][name] = torch.zeros_like(buf)
  model.load_state_dict(out['model'], strict=True)
  classifier.load_state_dict(out['classifier'], strict=True)


def test_top1(model, classifier, loader) -> float:
  model.eval()
  classifier.eval()
  correct = total = 0
  with torch.no_grad():
    for images, target in loader:
      pred = classifier(model(images)).argmax(1)
      correct += int((pred == target).sum())
      total += int(target.numel())
  return correct / total


def main():
  p = argparse.ArgumentParser()
  for flag in ('code', 'arrays', 'data', 'out', 'result'):
    p.add_argument(f'--{flag}', required=True)
  p.add_argument('--num_classes', type=int, required=True)
  args = p.parse_args()
  sys.path.insert(0, args.code)
  from datasets.parity_npz import ParityNPZ  # pylint: disable=g-import-not-at-top
  from models import resnet_cifar  # pylint: disable=g-import-not-at-top

  model = resnet_cifar.parity_resnet_fe()
  classifier = resnet_cifar.Classifier(feat_in=64, num_classes=args.num_classes)
  state_dicts(np.load(args.arrays), model, classifier)
  top1 = test_top1(model, classifier, ParityNPZ(args.data).eval)
  torch.save(
    {
      'epoch': 0,
      'state_dict_model': model.state_dict(),
      'state_dict_classifier': classifier.state_dict(),
      'best_acc1': torch.tensor(100.0 * top1),
      'its_ece': 0.0,
    },
    args.out,
  )
  with open(args.result, 'w') as f:
    json.dump({'top1': top1}, f)


if __name__ == '__main__':
  main()
