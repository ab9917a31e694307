"""Frozen-encoder evaluation of DINOv2-family image encoders (the XR-0 protocols).

    mxr0 eval vision --model xr0=runs/xr0/export --random-baseline --data data_cache/phantom --out runs/eval

- `features`: one pass of the frozen encoder over the studies, cached on disk (CLS, mean patch
  token, CLS of the last four blocks, patch-token maps for segmentation);
- `probe`: linear probe on cached features with a learning-rate sweep selected on the validation
  split, per-label and mean AUROC with bootstrap intervals on the test split;
- `knn`: weighted cosine kNN classification and retrieval (precision@k, mAP), e.g. anatomy;
- `segmentation`: frozen backbone + a linear (1x1 conv) head or a light multi-scale decoder, Dice
  per organ on the phantom's lung and heart masks;
- `fairness`: every metric per sex and per age band, with the largest gap;
- `convergence`: steps to reach a target probe AUROC (probe training, or pretraining from a run's
  log), and the speed-up between initialisations;
- `report`: JSON, Markdown and PNG plots; `suite` runs it all; `cli` is ``mxr0 eval vision``.
"""
