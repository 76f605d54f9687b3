"""The k-NN monitor: a cheap signal of what the target encoder learns, logged during training."""
from __future__ import annotations

from ijepa_jax import data
from ijepa_jax.evaluation import features, knn


class Monitor:
  """The cheap in-training signal: k-NN top-1 of the target encoder's pooled features, train subset as
  the bank, test subset as queries (probe.monitor_train / monitor_test images), logged as `knn_monitor`."""

  def __init__(self, config, encoder, mesh):
    pc, d = config.probe, config.data
    self.encoder, self.mesh, self.config = encoder, mesh, config
    self.train = data.load_eval_arrays(config, d.split, int(pc.monitor_train))
    self.test = data.load_eval_arrays(config, d.eval_split, int(pc.monitor_test))

  def __call__(self, target_params) -> float:
    d, pc = self.config.data, self.config.probe
    f = [features.extract(self.encoder, target_params, x, d.mean, d.std, pc.batch_size, self.mesh)
         for x, _ in (self.train, self.test)]
    return knn.knn(f[0], self.train[1], f[1], self.test[1], pc.knn_k, pc.knn_temperature)["top1"]
