"""The accelerator benchmark suite: its peak table, flags, and a tiny run."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import _common
from benchmarks import accelerator_suite as suite
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parents[2]
TERA = 1e12


# The datasheets' tensor-core figures "with sparsity" (TFLOP/s), which are
# twice the dense ones; their float32 figures have no sparse form.
@pytest.mark.parametrize('kind, dtype, precision, sparse, fp32, column', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', None, 1979, None, 'bf16'),
    ('NVIDIA H100 80GB HBM3', 'float32', None, 989, None, 'tf32'),
    ('NVIDIA H100 80GB HBM3', 'float32', 'highest', None, 67, 'fp32'),
    ('NVIDIA H200', 'bfloat16', None, 1979, None, 'bf16'),
    ('NVIDIA H200', 'float32', 'float32', None, 67, 'fp32'),
    ('NVIDIA H100 PCIe', 'bfloat16', None, 1513, None, 'bf16'),
    ('NVIDIA H100 NVL', 'float32', None, 835, None, 'tf32'),
    ('NVIDIA A100-SXM4-40GB', 'bfloat16', None, 624, None, 'bf16'),
    ('NVIDIA A100-SXM4-80GB', 'float32', None, 312, None, 'tf32'),
    ('NVIDIA A100-PCIE-40GB', 'float32', 'highest', None, 19.5, 'fp32'),
    ('NVIDIA L4', 'bfloat16', None, 242, None, 'bf16'),
    # V100 has no TF32: float32 runs on its FP32 units.
    ('Tesla V100-SXM2-16GB', 'float32', None, None, 15.7, 'fp32'),
])
def test_gpu_peaks_are_the_datasheets_dense_figures(kind, dtype, precision,
                                                     sparse, fp32, column):
  peak, used = suite.device_peak(kind, dtype, precision)
  expected = (sparse / 2 if sparse else fp32) * TERA
  assert used == column
  assert peak == pytest.approx(expected, rel=0.002)


@pytest.mark.parametrize('kind, per_chip, devices_per_chip', [
    ('TPU v3', 123, 2), ('TPU v4', 275, 1), ('TPU v5 lite', 197, 1),
    ('TPU v5', 459, 1), ('TPU v6 lite', 918, 1)])
def test_tpu_peaks_are_per_jax_device(kind, per_chip, devices_per_chip):
  # At the default precision float32 matmuls run as bfloat16 passes.
  for dtype in ('bfloat16', 'float32'):
    peak, column = suite.device_peak(kind, dtype)
    assert column == 'bf16'
    assert peak == pytest.approx(per_chip / devices_per_chip * TERA)
  assert suite.device_peak(kind, 'float32', 'highest') == (None, 'n/a')


# The L40S is not an L4.
@pytest.mark.parametrize('kind', ['cpu', 'NVIDIA GeForce GTX 1080',
                                  'NVIDIA L40S', 'Radeon'])
def test_unknown_devices_have_no_peak(kind):
  assert suite.device_peak(kind, 'bfloat16') == (None, 'n/a')


def test_unknown_section_is_a_user_error_naming_the_nearest():
  with pytest.raises(suite.SectionError, match="did you mean 'remat'"):
    suite.parse_sections('f0,rematt')
  assert suite.parse_sections(' runner , f0') == ['runner', 'f0']


def test_the_table_has_one_row_per_record_and_says_the_comparisons():
  records = [
      {'section': 'remat', 'label': 'a', 'step_s_median': 0.5,
       'images_per_s': 64.0, 'compile_s': 30.0, 'mfu': 0.4,
       'memory_bytes': 3 * 2**30, 'memory_saving': 0.25,
       'step_time_ratio': 1.3, 'compare_to': 'b'},
      {'section': 'runner', 'label': 'real', 'step_s_median': 0.1,
       'step_time_ratio': 1.01, 'compare_to': 'synthetic',
       'pipeline_s_per_batch': 0.02, 'prefetch_check': 'pass'},
      {'section': 'f0', 'label': 'failed', 'error': 'OOM'},
  ]
  rows = suite.table_rows(records)
  assert len(rows) == 1 + len(records)
  assert rows[1][2:7] == ['500.0', '64.0', '30.0', '40.0%', '3072']
  assert 'memory -25%' in rows[1][-1] and 'x1.300 of b' in rows[1][-1]
  assert 'prefetch check pass' in rows[2][-1]
  assert rows[3][2] == '-' and 'error: OOM' in rows[3][-1]


@pytest.mark.slow
def test_tiny_suite_measures_every_section(tmp_path, capsys):
  # Records go to tmp_path only, never to benchmarks/results.
  results = pathlib.Path(_common.RESULTS_DIR) / suite.RESULTS_FILE
  before = results.stat().st_mtime_ns if results.exists() else None
  records = suite.run(suite.parse_args(
      ['--tiny', f'--results_dir={tmp_path}', '--fail_fast']))
  out = capsys.readouterr().out
  after = results.stat().st_mtime_ns if results.exists() else None
  assert before == after

  assert not [r for r in records if r.get('error')]
  assert {r['section'] for r in records} == set(suite.SECTIONS)
  saved = [json.loads(line) for line in
           (tmp_path / suite.RESULTS_FILE).read_text().splitlines()]
  assert [r['label'] for r in saved] == [r['label'] for r in records]
  for rec in saved:
    assert rec['tiny'] and rec['device_kind'] and rec['jax']
    assert rec['timestamp'] and rec['machine']['backend']
    assert math.isfinite(rec['step_s_median']) and rec['step_s_median'] > 0
    assert rec['images_per_s'] == pytest.approx(
        rec['batch'] / rec['step_s_median'])
    if rec['section'] != 'runner':
      assert rec['compile_s'] > 0 and rec['xla_flops'] > 0
      assert rec['memory_bytes'] > 0
      # No peak is known for a CPU: MFU is n/a, not a made-up figure.
      assert rec['mfu'] is None and rec['peak_column'] == 'n/a'

  def one(section, **match):
    found = [r for r in saved if r['section'] == section and all(
        r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (section, match, found)
    return found[0]

  with_remat = one('remat', remat=True)
  without = one('remat', remat=False)
  assert with_remat['memory_saving'] == pytest.approx(
      1 - with_remat['memory_bytes'] / without['memory_bytes'])
  assert {(r['batch'], r['dtype']) for r in saved if r['section'] == 'f0'} == {
      (2, 'float32'), (4, 'bfloat16')}
  nf = one('nf_vs_bn', model='nf_resnet50')
  bn = one('nf_vs_bn', model='bn_resnet50')
  assert nf['step_time_ratio'] == pytest.approx(
      nf['step_s_median'] / bn['step_s_median'])
  effnet = one('effnet_vs_f0', model='efficientnet_b0')
  f0 = one('f0', batch=4, dtype='bfloat16')
  assert effnet['step_time_ratio'] == pytest.approx(
      effnet['step_s_median'] / f0['step_s_median'])
  real = one('runner', compare_to='synthetic')
  synthetic = one('runner', data='synthetic')
  assert real['pipeline_s_per_batch'] > 0
  assert real['step_time_ratio'] == pytest.approx(
      real['step_s_median'] / synthetic['step_s_median'])
  assert real['prefetch_check'] in ('pass', 'fail', 'n/a (input-bound)')
  assert (real['prefetch_check'] == 'n/a (input-bound)') == (
      real['pipeline_s_per_batch'] >= synthetic['step_s_median'])

  # One table: its header, then one row per record.
  lines = out.splitlines()
  header = next(i for i, line in enumerate(lines)
                if line.startswith('section '))
  assert len(lines) - header - 1 == len(records)


def test_command_line_reports_a_bad_section_in_one_line():
  result = subprocesses.run(
      [sys.executable, '-m', 'benchmarks.accelerator_suite', '--tiny',
       '--sections=f0,efnet_vs_f0', '--no_save'],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ, NFNETS_HUGE_PAGES='0'))
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip() == (
      "error: Unknown section 'efnet_vs_f0' in --sections; did you mean "
      "'effnet_vs_f0'? sections: remat, f0, nf_vs_bn, effnet_vs_f0, runner.")
