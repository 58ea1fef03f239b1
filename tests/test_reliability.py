"""What the runner guarantees when things go wrong.

One run per work directory (an OS lock), saves that fail stop the run with
one message and leave older checkpoints restorable, an unreadable newest
checkpoint is skipped, a failed start writes nothing, and every mistake a
user can make is one `error:` line from the command lines, never a
traceback.
"""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nfnets import configs
from nfnets import errors
from nfnets import evaluate
from nfnets import experiment
from nfnets import train
from nfnets.train import checkpoint
from nfnets.train import lock as lock_lib
from nfnets.train import metrics as metrics_lib
from tests.conftest import DIGITS_RUN_FLAGS
from tests.conftest import digits_run_config
from tests.train.test_compat import LEGACY_RUN
from tests import subprocesses

REPO = pathlib.Path(__file__).resolve().parent.parent
# A small, fast run: a two-stage F0 at 1/16 width on 16 px digits.
TINY = ('--config=experiments/digits.py', '--config.training.num_steps=2',
        '--config.optimizer.warmup_steps=1', '--config.eval.every_steps=0',
        '--config.data.image_size=16', '--config.data.eval_image_size=16',
        '--config.model.kwargs.width=0.0625',
        '--config.model.kwargs.depth=(1,1)',
        '--config.model.kwargs.widths=(256,512)')


def _snapshot(root: pathlib.Path) -> dict[str, str]:
  """Every file's hash and every directory under `root`."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          if p.is_file() else 'dir' for p in sorted(root.rglob('*'))}


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocesses.run([sys.executable, '-m', module, *args], cwd=REPO,
                        capture_output=True, text=True)


def _assert_one_error(result: subprocess.CompletedProcess, needle: str,
                      max_lines: int = 3):
  """Exit status 1, no traceback, and the message last, at most 3 lines."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert '\nerror: ' in '\n' + result.stderr, result.stderr[-3000:]
  message = result.stderr[('\n' + result.stderr).rindex('\nerror: '):]
  assert needle in message, message
  assert len(message.strip().splitlines()) <= max_lines, message


def _legacy_copy(tmp_path: pathlib.Path) -> pathlib.Path:
  return shutil.copytree(LEGACY_RUN, tmp_path / 'run')


def _legacy_config():
  config = configs.digits_config()
  config.model.kwargs.width = 0.03125
  config.data.image_size = config.data.eval_image_size = 16
  config.optimizer.warmup_steps = 1
  return config


# ------------------------------------------------------------------ the lock


def test_a_second_runner_on_a_locked_workdir_exits_at_once(tmp_path):
  workdir = tmp_path / 'run'
  holder = subprocesses.popen(
      [sys.executable, '-c', 'import sys, time\n'
       'from nfnets.train import lock\n'
       f'lock.WorkdirLock({str(workdir)!r}).acquire()\n'
       f'print("locked", flush=True)\ntime.sleep({subprocesses.TIMEOUT_S})\n'],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    result = _cli('nfnets.experiment', f'--workdir={workdir}', *TINY)
    _assert_one_error(result, f'pid {holder.pid}')
    assert 'in use by another run' in result.stderr
    assert holder.poll() is None  # It did not wait for the lock.
    assert not (workdir / 'config.json').exists()
  finally:
    holder.kill()  # SIGKILL: the kernel releases the lock.
    holder.wait()
  with lock_lib.WorkdirLock(workdir) as lock:
    assert lock.path.exists()


def test_lock_refuses_a_file_and_undoes_what_it_created(tmp_path):
  a_file = tmp_path / 'file'
  a_file.write_text('')
  with pytest.raises(errors.UserError, match='is a file'):
    lock_lib.WorkdirLock(a_file).acquire()
  lock = lock_lib.WorkdirLock(tmp_path / 'new' / 'run')
  lock.acquire()
  lock.release(undo=True)
  assert not (tmp_path / 'new' / 'run').exists()


# ----------------------------------------------- starts that change nothing


@pytest.mark.parametrize('change, needle', [
    (('model.name', 'nf_resnet50'), "holds 'nfnet_f0'"),
    (('model.kwargs.width', 0.0625), 'NFNet/~/'),
])
def test_a_checkpoint_of_another_model_is_refused_untouched(
    tmp_path, change, needle):
  workdir = _legacy_copy(tmp_path)
  before = _snapshot(workdir)
  config = _legacy_config()
  path, value = change
  group, _, field = path.rpartition('.')
  config_group = config
  for part in group.split('.'):
    config_group = config_group[part]
  config_group[field] = value
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match='fresh --workdir') as error:
    train.train_and_evaluate(config, workdir)
  assert needle in str(error.value)
  assert _snapshot(workdir) == before


# ----------------------------------------------------- unreadable checkpoints


def _truncate_data(step_dir: pathlib.Path) -> None:
  for f in (step_dir / 'state').rglob('*'):
    if f.is_file() and f.parent.name == 'd':
      f.write_bytes(f.read_bytes()[:10])


def _drop_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / 'state' / '_METADATA').unlink()


def _garble_config(step_dir: pathlib.Path) -> None:
  (step_dir / 'config' / 'metadata').write_text('{"model": ')


@pytest.mark.slow
@pytest.mark.parametrize('corrupt', [_truncate_data, _drop_metadata,
                                     _garble_config],
                         ids=lambda f: f.__name__.strip('_'))
def test_a_run_whose_newest_checkpoint_is_unreadable_finishes_bit_identical(
    digits_run, tmp_path, caplog, corrupt):
  # The shared run saved steps 1 and 2; its step 2 is the reference.
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  steps = workdir / 'checkpoints'
  corrupt(steps / '2')
  corrupted = _snapshot(steps / '2')
  metrics = train.train_and_evaluate(digits_run_config(), workdir)

  assert metrics['step'] == 2
  aside = [p for p in steps.iterdir() if p.name.startswith('2.unreadable-')]
  assert len(aside) == 1 and _snapshot(aside[0]) == corrupted
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == 'WARNING' and 'cannot be read' in r.getMessage()]
  assert len(warnings) == 1 and str(aside[0]) in warnings[0], warnings
  assert 'resumed from step 1' in warnings[0]
  assert checkpoint.checkpoint_manager(workdir).all_steps() == [1, 2]
  fresh = checkpoint.read_saved(workdir, 2).state
  reference = checkpoint.read_saved(digits_run, 2).state
  assert (jax.tree.structure(fresh) == jax.tree.structure(reference))
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  # The resumed run logged step 2 again: one record per step remains.
  assert [r['step'] for r in metrics_lib.read_metrics(workdir)] == [1, 2]


def test_a_resumed_run_keeps_one_metrics_record_per_step(tmp_path):
  # A run killed after logging steps 1-5 (the last line cut short) whose
  # newest checkpoint is step 3 resumes there and logs 4 and 5 again.
  lines = [json.dumps({'step': step, 'train/loss': 1.0 / step})
           for step in range(1, 6)]
  (tmp_path / metrics_lib.METRICS_FILE).write_text(
      '\n'.join(lines) + '\n{"step": 6, "train/lo')
  writer = metrics_lib.MetricWriter(tmp_path, start_step=3)
  writer.write(4, {'train/loss': 0.25})
  writer.close()
  records = metrics_lib.read_metrics(tmp_path)
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert [r['train/loss'] for r in records] == [1.0, 0.5, 1.0 / 3, 0.25]


def test_no_readable_checkpoint_is_one_error_and_changes_nothing(digits_run,
                                                                 tmp_path):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  for step in ('1', '2'):
    _truncate_data(workdir / 'checkpoints' / step)
  before = _snapshot(workdir)
  result = _cli('nfnets.experiment', f'--workdir={workdir}',
                *DIGITS_RUN_FLAGS)
  _assert_one_error(result, 'can be read (steps 2, 1)')
  assert _snapshot(workdir) == before


# ------------------------------------------------------------- failed saves


def _mount(*args: str) -> None:
  try:
    subprocess.run(['mount', *args], check=True, capture_output=True)
  except (OSError, subprocess.CalledProcessError) as e:
    pytest.skip(f'cannot mount here ({e})')


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_message(tmp_path):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  _mount('-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(workdir / 'checkpoints'))
  try:
    result = _cli('nfnets.experiment', f'--workdir={workdir}', *TINY)
    # The probe before orbax starts says so (orbax itself would have waited
    # minutes for its writer threads).
    _assert_one_error(result, 'MiB are free')
    assert str(workdir / 'checkpoints') in result.stderr
  finally:
    subprocess.run(['umount', str(workdir / 'checkpoints')], check=False)


@pytest.mark.slow
def test_a_read_only_checkpoint_directory_keeps_older_ones(tmp_path):
  workdir = tmp_path / 'run'
  assert _cli('nfnets.experiment', f'--workdir={workdir}',
              *TINY).returncode == 0
  steps = workdir / 'checkpoints'
  _mount('--bind', str(steps), str(steps))
  try:
    _mount('-o', 'remount,bind,ro', str(steps))
    result = _cli('nfnets.experiment', f'--workdir={workdir}', *TINY,
                  '--config.training.num_steps=3')
    _assert_one_error(result, 'Read-only file system')
  finally:
    subprocess.run(['umount', str(steps)], check=False)
  assert checkpoint.checkpoint_manager(workdir).all_steps() == [2]
  again = _cli('nfnets.experiment', f'--workdir={workdir}', *TINY,
               '--config.training.num_steps=3')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from step 2' in again.stderr


# ----------------------------------------------- user errors, as one line


_SYNTAX = 'def get_config(:\n'
_NO_GET_CONFIG = 'X = 1\n'
_RAISES = 'def get_config():\n  raise RuntimeError("boom in get_config")\n'


@pytest.mark.parametrize('args, needle', [
    (('--config.training.batch_sise=8',), 'Did you mean "batch_size"'),
    (('--config=/nonexistent/config.py',), 'No such file'),
    (('CONFIG_FILE', _SYNTAX), 'invalid syntax'),
    (('CONFIG_FILE', _NO_GET_CONFIG), 'get_config'),
    (('CONFIG_FILE', _RAISES), 'boom in get_config'),
    (('--config.model.kwargs.widht=0.5',), "did you mean 'width'"),
    (('--config.model.kwargs.width=0',), 'cannot be built'),
    (('--config.optimizer.classifier_pattern=(',), 'regular expression'),
    (('WORKDIR_IS_A_FILE',), 'is a file'),
    (('--config=experiments/nfnet_f0.py', 'EMPTY_DATA_DIR'),
     'download_and_prepare'),
    (('LEGACY_WORKDIR', '--config.model.name=nf_resnet50'),
     "holds 'nfnet_f0'"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_runner_user_errors_are_one_line(tmp_path, args, needle):
  workdir = tmp_path / 'run'
  flags = []
  args = list(args)
  if args[0] == 'CONFIG_FILE':
    path = tmp_path / 'my_config.py'
    path.write_text(args[1])
    args = [f'--config={path}']
  elif args[0] == 'WORKDIR_IS_A_FILE':
    workdir.write_text('')
    args = []
  elif args[0] == 'LEGACY_WORKDIR':
    workdir = _legacy_copy(tmp_path)
    args = args[1:]
  if 'EMPTY_DATA_DIR' in args:
    args[args.index('EMPTY_DATA_DIR')] = f'--config.data.data_dir={tmp_path}'
  elif not any(a.startswith('--config=') for a in args):
    flags = list(TINY)
  result = _cli('nfnets.experiment', f'--workdir={workdir}', *flags, *args)
  _assert_one_error(result, needle)


def test_traceback_flag_shows_the_traceback(tmp_path):
  result = _cli('nfnets.experiment', f'--workdir={tmp_path / "run"}',
                '--config.training.batch_sise=8', '--traceback')
  assert result.returncode != 0 and 'Traceback' in result.stderr


@pytest.mark.parametrize('args, needle', [
    (('--batch_size=-1',), 'batch_size must be positive'),
    (('--split=bogus',), "Unknown split 'bogus'"),
    (('--step=7',), 'saved steps'),
])
def test_evaluate_user_errors_are_one_line(args, needle):
  result = _cli('nfnets.evaluate', f'--workdir={LEGACY_RUN}', '--no_progress',
                *args)
  _assert_one_error(result, needle)


def test_model_kwargs_parse_as_literals():
  argv = ['prog', '--config.model.kwargs.width=0.5', '--workdir=x',
          '--config.model.kwargs.activation=silu',
          '--config.model.kwargs.depth=(1, 2)']
  assert experiment.take_model_kwargs(argv) == {
      'width': 0.5, 'activation': 'silu', 'depth': (1, 2)}
  assert argv == ['prog', '--workdir=x']


# ------------------------------- every command line, every class of mistake

_DICT_CONFIG = 'def get_config():\n  return {"model": {"name": "nfnet_f0"}}\n'
_SPP = ('--models=nf_resnet_ws', '--depth=50', '--width=0.0625',
        '--image_size=16', '--batch_size=2', '--out={tmp}/spp.png')
_STEP = ('--model=nfnet_f0', '--width=0.0625', '--image_size=16',
         '--results={tmp}/records.jsonl')

# (command line, arguments, what the message says). In the arguments,
# {file} is a regular file, {ro} a directory on a read-only file system,
# {legacy} a work directory with a checkpoint, {legacy_ro} the same on a
# read-only file system, {truncated} one whose checkpoint's data files are
# cut short, {dict_config} a config file whose get_config returns a dict.
_MISTAKES = [
    # Paths that cannot be created or written.
    ('nfnets.experiment', ('--workdir={file}/run', *TINY), 'Not a directory'),
    ('nfnets.experiment', ('--workdir={ro}/run', *TINY),
     'Read-only file system'),
    ('nfnets.experiment', ('--workdir={legacy_ro}', *TINY,
                           '--config.model.kwargs.width=0.03125'),
     'runner.lock'),
    ('nfnets.evaluate', ('--workdir={legacy}', '--confusion_png={file}/c.png'),
     'Not a directory'),
    ('nfnets.evaluate', ('--workdir={legacy}', '--confusion_png={ro}/c.png'),
     'Read-only file system'),
    ('nfnets.spp', (*_SPP, '--out={file}/spp.png'), 'Not a directory'),
    ('nfnets.spp', (*_SPP, '--out={ro}/spp.png'), 'Read-only file system'),
    ('benchmarks.train_step', (*_STEP, '--results={file}/r.jsonl'),
     'Not a directory'),
    # Configs that are not ConfigDicts.
    ('nfnets.experiment', ('--config={dict_config}', '--workdir={tmp}/run'),
     'not an ml_collections.ConfigDict'),
    # Flags absl would answer with its whole --help, and a seed numpy refuses
    # only after the work directory exists.
    ('nfnets.experiment', ('--workdir=',), '--workdir is required'),
    ('nfnets.experiment', ('--workdir={tmp}/run', *TINY, '--num_processes=2'),
     'needs --coordinator_address'),
    ('nfnets.experiment', ('--workdir={tmp}/run', *TINY,
                           '--config.training.seed=-1'),
     'training.seed must be >= 0'),
    # Evaluation refused after its output path was checked: nothing made.
    ('nfnets.evaluate', ('--workdir={legacy}', '--batch_size=-1',
                         '--no_progress'), 'batch_size must be positive'),
    # Checkpoints that cannot be read.
    ('nfnets.evaluate', ('--workdir={truncated}', '--no_progress'),
     'corrupt or incomplete'),
    # Flags out of range or inconsistent.
    ('nfnets.spp', (*_SPP, '--width=0'), 'width must be positive'),
    ('nfnets.spp', (*_SPP, '--batch_size=0'), 'batch_size must be at least 2'),
    ('nfnets.spp', (*_SPP, '--models='), 'Name at least one model'),
    ('nfnets.spp', (*_SPP, '--image_size=-8'), 'image_size must be positive'),
    ('nfnets.spp', (*_SPP, '--depth=51'), 'has no depth 51; depths: 50, 101'),
    ('nfnets.spp', (*_SPP, '--models=nfnet_f0:x'), "Unknown model 'nfnet_f0:x'"),
    ('nfnets.spp', (*_SPP, '--depth=abc'), 'flag --depth=abc'),
    ('benchmarks.train_step', (*_STEP, '--batch=0'),
     '--batch must be at least 1'),
    ('benchmarks.train_step', (*_STEP, '--steps=0'),
     '--steps must be at least 1'),
    ('benchmarks.train_step', (*_STEP, '--sam_rho=-0.1'),
     '--sam_rho must be >= 0'),
    ('benchmarks.train_step', (*_STEP, '--devices=3'),
     'does not divide over --devices=3'),
    ('benchmarks.train_step', (*_STEP, '--model=nfnet_f0@bogus'),
     'Unknown suffix @bogus'),
    ('benchmarks.train_step', (*_STEP, '--image_size=-2'),
     '--image_size must be at least 1'),
    ('benchmarks.inference', ('--batch=0', '--no_save'),
     '--batch must be at least 1'),
    ('benchmarks.input_pipeline', ('--seconds=0', '--no_save'),
     '--seconds must be positive'),
    ('benchmarks.agc_stability', ('--steps=0', '--out={tmp}/agc'),
     '--steps must be at least 1'),
    ('benchmarks.batch_size_study', ('--epochs=0', '--results={tmp}/r.json'),
     '--epochs must be positive'),
    ('benchmarks.ho_stacking_study', ('--seeds=0', '--results={tmp}/r.json'),
     '--seeds must be at least 1'),
    ('benchmarks.accelerator_suite', ('--fake_classes=0', '--no_save'),
     '--fake_classes must be at least 1'),
]


@pytest.fixture
def mistake_paths(tmp_path):
  """The paths `_MISTAKES` name, with read-only mounts when asked."""
  mounts = []

  def make(args: tuple[str, ...]) -> list[str]:
    text = ' '.join(args)
    paths = {'tmp': tmp_path, 'file': tmp_path / 'a_file',
             'ro': tmp_path / 'ro', 'legacy': tmp_path / 'legacy',
             'legacy_ro': tmp_path / 'legacy_ro',
             'truncated': tmp_path / 'truncated',
             'dict_config': tmp_path / 'dict_config.py'}
    paths['file'].write_text('a regular file')
    paths['dict_config'].write_text(_DICT_CONFIG)
    for name in ('legacy', 'legacy_ro', 'truncated'):
      if '{' + name + '}' in text:
        shutil.copytree(LEGACY_RUN, paths[name])
    if '{truncated}' in text:
      _truncate_data(paths['truncated'] / 'checkpoints' / '2')
    for name in ('ro', 'legacy_ro'):
      if '{' + name + '}' in text:
        paths[name].mkdir(exist_ok=True)
        _mount('--bind', str(paths[name]), str(paths[name]))
        mounts.append(paths[name])
        _mount('-o', 'remount,bind,ro', str(paths[name]))
    return [a.format(**paths) for a in args]

  yield make
  for path in mounts:
    subprocess.run(['umount', str(path)], check=False)


@pytest.mark.parametrize('module, args, needle', _MISTAKES,
                         ids=[f'{m}:{a[-1][:30]}' for m, a, _ in _MISTAKES])
def test_every_mistake_is_one_short_error_that_writes_nothing(
    tmp_path, mistake_paths, module, args, needle):
  args = mistake_paths(args)
  before = _snapshot(tmp_path)
  result = _cli(module, *args)
  _assert_one_error(result, needle)
  assert _snapshot(tmp_path) == before


# ------------------------------------------------------- inputs of predict


@pytest.fixture(scope='module')
def legacy_ckpt():
  return evaluate.load_checkpoint(LEGACY_RUN)


@pytest.mark.parametrize('images, needle', [
    (np.zeros((8, 8, 3), np.uint8), 'unbatched'),
    (np.full((2, 8, 8), 200.0, np.float32), 'must be in [0, 1]'),
    (np.full((2, 8, 8), np.nan, np.float32), 'NaN'),
    (np.zeros((2, 8, 8, 2), np.uint8), 'must be a batch'),
    (np.zeros((2, 8, 8), np.int64), 'uint8'),
    (np.zeros((2, 0, 8), np.uint8), 'no pixels'),
    (np.zeros((2, 8, 0, 3), np.float32), 'no pixels'),
])
def test_predict_refuses_images_it_would_misread(legacy_ckpt, images, needle):
  with pytest.raises(errors.InputError) as error:
    legacy_ckpt.predict(images)
  assert needle in str(error.value)


def test_predict_and_logits_check_batch_size_and_shape(legacy_ckpt):
  images = np.zeros((2, 8, 8), np.uint8)
  np.testing.assert_allclose(legacy_ckpt.predict(images[:1]).sum(), 1.0,
                             rtol=1e-5)
  with pytest.raises(errors.InputError, match='batch_size'):
    legacy_ckpt.predict(images, batch_size=0)
  with pytest.raises(errors.InputError, match=r'\[N, S, S, 3\]'):
    legacy_ckpt.logits(np.zeros((16, 16, 3), np.float32))
  with pytest.raises(errors.InputError, match=r'\[N, S, S, 3\]'):
    legacy_ckpt.logits(np.zeros((2, 0, 0, 3), np.float32))
  with pytest.raises(errors.InputError, match='batch_size'):
    evaluate.evaluate(legacy_ckpt, batch_size=0, progress=False)


@pytest.mark.parametrize('module, args', [
    ('nfnets.spp', ('--models=nfnet_f9', '--depth=50')),
    ('benchmarks.train_step', ('--model', 'nfnet_f9', '--no-save')),
])
def test_spp_and_benchmarks_report_user_errors_alike(module, args):
  _assert_one_error(_cli(module, *args), "did you mean 'nfnet_f")


@pytest.mark.slow
def test_two_processes_share_one_lock(tmp_path):
  # Process 0 of a multi-process run locks the work directory for all of
  # them; the other process must neither take it nor be refused by it.
  workdir = tmp_path / 'run'
  port = 20000 + os.getpid() % 20000
  procs = [subprocesses.popen(
      [sys.executable, '-m', 'nfnets.experiment', f'--workdir={workdir}',
       *TINY, '--num_processes=2', f'--process_id={i}',
       f'--coordinator_address=127.0.0.1:{port}'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [subprocesses.communicate(p) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert f'"pid": {procs[0].pid}' in (workdir / 'runner.lock').read_text()
  assert checkpoint.checkpoint_manager(workdir).all_steps() == [2]
