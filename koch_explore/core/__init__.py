"""The small shared core every postulate stands on: geometry (boxes, Gaussian blur), statistics
(one ROC AUC, kappa, rank correlation), image batches, device/DDP/checkpoint helpers, and the
safetensors I/O with the registry of shipped weights. Nothing here imports another package of
koch_explore."""
