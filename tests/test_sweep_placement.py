"""mlc_jax.sweep.placement: each local worker's share of the cores and, with GPUs, its own GPU."""
from mlc_jax import sweep


def test_cpu_workers_split_the_cores_round_robin():
  assert sweep.placements(2, cores=[0, 1, 2, 3], gpus=[]) == [([0, 2], {}), ([1, 3], {})]
  # more workers than cores: each still gets one core (shared), none an empty set
  assert sweep.placements(3, cores=[0, 1], gpus=[]) == [([0], {}), ([1], {}), ([0], {})]


def test_gpu_workers_each_see_their_own_gpu_and_share_without_preallocation():
  own = sweep.placements(2, cores=[0, 1], gpus=["0", "1"])
  assert [env for _, env in own] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
  shared = sweep.placements(3, cores=[0, 1, 2], gpus=["5", "7"])
  assert [env["CUDA_VISIBLE_DEVICES"] for _, env in shared] == ["5", "7", "5"]
  assert all(env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for _, env in shared)
