"""The refusals of the README's tables through main, each exactly one ``error:`` line and
no traceback (``workdirs.error_line``). Those that only a run reaches (a NaN loss, a full
disk, a held lock, a damaged or mismatched store, an undecodable image, another model's
workdir, a batch that does not split, a stage of another config) are checked where their
tests already make them: test_train_system, test_data_undecodable, test_stage_records,
test_bad_files. The rest run here, in this process."""
from workdirs import error_line, main_in_process

STUDENT = '--config=tests/helpers/train_config.py'


def test_a_wrong_recipe_path(tmp_path, capfd):
  result = main_in_process(capfd, '--config=configs/nope.py', f'--workdir={tmp_path}')
  assert error_line(result) == ("error: --config=configs/nope.py: no recipe file "
                                "'configs/nope.py'; see configs/.")


def test_a_bucket_url_for_a_path(capfd):
  result = main_in_process(capfd, STUDENT, '--workdir=gs://bucket/run')
  assert error_line(result) == (
      "error: --workdir='gs://bucket/run': paths go through local file APIs, so mount the "
      'bucket on every host (gcsfuse --implicit-dirs bucket /mnt/gcs/bucket) and give '
      '/mnt/gcs/bucket/run; launch/tpu_vm.sh mounts gs:// paths itself.')


def test_no_data_given_and_data_not_there(tmp_path, capfd):
  in1k = ('--config=configs/in1k.py:variant=5m', f'--workdir={tmp_path / "run"}')
  assert error_line(main_in_process(capfd, *in1k)) == (
      "error: Impossible config: data.train.data_dir is empty, and data.source='tfds' reads "
      'it: give --data_dir=DIR or --config.data.train.data_dir=PATH. data.eval.data_dir is '
      "empty, and data.source='tfds' reads it: give --data_dir=DIR or "
      '--config.data.eval.data_dir=PATH.')
  line = error_line(main_in_process(capfd, *in1k, f'--data_dir={tmp_path / "nope"}'))
  assert line.startswith(f"error: tfds dataset 'imagenet2012' (split 'train') is not prepared "
                         f"in array_record format in data_dir '{tmp_path / 'nope'}': the "
                         'directory does not exist. Prepare it on a machine with TensorFlow')
  quickstart = ('--config=configs/quickstart.py', f'--workdir={tmp_path / "qs"}')
  assert error_line(main_in_process(capfd, *quickstart, f'--data_dir={tmp_path}')) == (
      f"error: --data_dir='{tmp_path}': this recipe reads no data files (data.source "
      'digits); drop --data_dir.')


def test_an_init_checkpoint_that_is_missing(tmp_path, capfd):
  """(The one of another head size is test_train_pretrained's: one line, a UserError.)"""
  result = main_in_process(capfd, STUDENT, f'--workdir={tmp_path / "run"}',
                           f'--config.init.checkpoint={tmp_path / "nope"}')
  assert error_line(result) == (
      f"error: init.checkpoint '{tmp_path / 'nope'}' does not exist. Give a directory written "
      "by a run's export stage or by python -m tinyvit_jax.convert --model NAME --from FILE "
      '--out DIR.')
