"""Config files plus command-line overrides, and the errors for bad config files."""

import pytest
from transformers import TrainingArguments

from hf_distill import DistillationArguments
from hf_distill.cli import parse_args


def test_yaml_config_with_cli_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\ntemperature: 4.0\nalpha: 0.9\nreport_to: none\nuse_cpu: true\n")
    (args,) = parse_args([DistillationArguments], [str(config), "--alpha", "0.3"])
    assert args.temperature == 4.0 and args.alpha == 0.3 and args.output_dir == "out"


def test_a_config_file_after_the_flags_is_refused_not_ignored(tmp_path):
    # It was dropped without a word, and the run failed later on whatever the config held ("No data: ...").
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\ntemperature: 4.0\n")
    with pytest.raises(ValueError, match=r"run.yaml' looks like a config file, but a config file is read only as the "
                                         r"first argument: put it before the flags"):
        parse_args([DistillationArguments], ["--alpha", "0.3", str(config)])
    # a flag's value that happens to be a JSON or YAML file is a value, not a config file
    (args,) = parse_args([DistillationArguments], [str(config), "--run_name", "logs.json", "--report_to", "none"])
    assert args.run_name == "logs.json" and args.temperature == 4.0


def test_json_config(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"output_dir": "out", "distill_loss": "soft_ce", "report_to": "none", "use_cpu": true}')
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.distill_loss == "soft_ce"


@pytest.mark.parametrize("name, text", [
    ("run.yaml", "output_dir: out\nreport_to: none\nlr_scheduler_kwargs: {num_cycles: 2}\n"),
    ("run.json", '{"output_dir": "out", "report_to": "none", "lr_scheduler_kwargs": {"num_cycles": 2}}'),
])
def test_a_mapping_in_a_config_file_reaches_the_field_as_on_the_command_line(tmp_path, name, text):
    config = tmp_path / name
    config.write_text(text)
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.lr_scheduler_kwargs == {"num_cycles": 2}


def test_a_single_layer_pair_in_yaml_is_not_a_base_60_number(tmp_path):
    # YAML 1.1 reads 3:6 as 3 * 60 + 6 = 186; the documented `student:teacher` syntax must survive the file.
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: none\nhidden_distill_weight: 1.0\nfeature_layer_map: 3:6\n"
                      "temperature: 4.0\nlogging_steps: 25\n")
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.feature_layer_map == "3:6"
    assert args.temperature == 4.0 and args.logging_steps == 25  # ordinary numbers are still numbers


def test_yaml_values_mean_what_the_same_flags_mean(tmp_path):
    # YAML 1.1 (PyYAML's default) reads `no` as False, keeps `1e-6` a string (no dot) and `010` octal (8).
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: none\nsave_strategy: no\nlr_scheduler_kwargs: {min_lr: 1e-6}\n"
                      "learning_rate: 3e-4\nlogging_steps: 010\nuse_cpu: true\n")
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.save_strategy == "no" and args.lr_scheduler_kwargs == {"min_lr": 1e-6}
    assert args.learning_rate == 3e-4 and args.logging_steps == 10 and args.use_cpu is True
    config.write_text("output_dir: out\nreport_to: none\nlogging_steps: 0o17\nsave_steps: 0x1f\n")  # YAML 1.2 bases
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert (args.logging_steps, args.save_steps) == (15, 31)


def test_a_yaml_list_for_a_single_valued_field(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: [none]\nfeature_layer_map: []\n")
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.report_to == [] and args.feature_layer_map is None  # "none", and the default
    config.write_text("output_dir: out\nreport_to: none\nhidden_distill_weight: 1.0\nfeature_layer_map: [0:1, 1:3]\n")
    with pytest.raises(ValueError, match=r"`feature_layer_map` takes a single value.*`feature_layer_map: \"0:1,1:3\"`"):
        parse_args([DistillationArguments], [str(config)])


def test_report_to_takes_a_yaml_list_and_the_command_line_overrides_it(tmp_path):
    # TrainingArguments takes report_to as a list, but its flag takes one value: a joined string is not a list.
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: [tensorboard, wandb]\ntemperature: 3.0\n")
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.report_to == ["tensorboard", "wandb"] and args.temperature == 3.0
    (args,) = parse_args([DistillationArguments], [str(config), "--report_to", "none"])
    assert args.report_to == []


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\ntemprature: 4.0\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\): 'temprature' \(did you mean 'temperature'\?\)"):
        parse_args([DistillationArguments], [str(config)])


@pytest.mark.parametrize(
    "text, message",
    [("", r"is empty"), ("- a\n- b\n", r"holds a list; it should map argument names"), ("a: [1,\n", r"not valid YAML")],
)
def test_bad_config_files(tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse_args([TrainingArguments], [str(config)])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Config file .*nope.yaml' does not exist"):
        parse_args([TrainingArguments], [str(tmp_path / "nope.yaml")])


def test_invalid_value_in_config_reaches_validation(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nalpha: 1.5\nreport_to: none\n")
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0, 1\], got 1.5"):
        parse_args([DistillationArguments], [str(config)])


def test_none_on_the_command_line_unsets_an_optional_field_the_file_sets(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: none\nalpha: 0.5\nfinal_alpha: 0.9\nalpha_schedule: linear\n")
    (args,) = parse_args([DistillationArguments], [str(config), "--final_alpha", "None", "--alpha_schedule",
                                                   "constant"])
    assert args.final_alpha is None and args.alpha == 0.5
    (args,) = parse_args([DistillationArguments], ["--output_dir", "out", "--report_to", "none", "--final_alpha",
                                                   "null"])
    assert args.final_alpha is None


def test_flags_mean_the_same_in_every_spelling_argparse_accepts(tmp_path):
    # --field value, --field=value and --field-name: the override, the unset and the config-file detection alike.
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: [tensorboard, wandb]\nalpha: 0.5\nfinal_alpha: 0.9\n"
                      "alpha_schedule: linear\n")
    for override in (["--report-to", "none"], ["--report_to=none"]):
        (args,) = parse_args([DistillationArguments], [str(config), *override])
        assert args.report_to == [], override
    for unset in (["--final_alpha=None"], ["--final-alpha", "None"]):
        (args,) = parse_args([DistillationArguments], [str(config), *unset, "--alpha_schedule", "constant"])
        assert args.final_alpha is None, unset
    # A first flag whose value ends in .json is a flag, not a config file.
    (args,) = parse_args([DistillationArguments], ["--output_dir=run.json", "--report_to", "none"])
    assert args.output_dir == "run.json"


@pytest.mark.parametrize("text", ["temperature:\n", "alpha: null\n", "adversarial: ~\n"])
def test_a_null_in_a_config_file_is_refused_for_a_field_that_needs_a_value(tmp_path, text):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: none\n" + text)
    name = text.split(":")[0]
    with pytest.raises(ValueError, match=rf"leaves '{name}' empty \(null\).*remove the key to keep the default"):
        parse_args([DistillationArguments], [str(config)])
    config.write_text("output_dir: out\nreport_to: none\nfinal_alpha: null\n")  # a field whose default is None
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.final_alpha is None


def test_a_layer_map_written_as_a_yaml_mapping_means_the_pairs(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: none\nhidden_distill_weight: 1.0\nfeature_layer_map: {1: 2, 2: 4}\n")
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.feature_layer_map == "1:2,2:4"


def test_fixed_switches_are_refused_in_every_spelling_and_from_a_config_file(tmp_path):
    fixed = {"do_train": (True, "this script always trains."), "do_predict": (False, "it writes no predictions.")}
    base = ["--output_dir", "out", "--report_to", "none", "--use_cpu", "true"]
    for flags in (["--do_train", "false"], ["--do_train=no"], ["--do-train", "0"], ["--do_predict"],
                  ["--do_predict", "true", "--seed", "1"]):
        with pytest.raises(ValueError, match="is not supported here: (this script always|it writes no)"):
            parse_args([TrainingArguments], base + flags, fixed_switches=fixed)
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: none\ndo_predict: true\n")
    with pytest.raises(ValueError, match="`--do_predict true` is not supported here: it writes no predictions"):
        parse_args([TrainingArguments], [str(config)], fixed_switches=fixed)
    # The values the script has anyway are fine (`--do_train --do_eval`, the Transformers examples' habit).
    (args,) = parse_args([TrainingArguments], base + ["--do_train", "--do_predict", "false"], fixed_switches=fixed)
    assert args.do_train and not args.do_predict
    (args,) = parse_args([TrainingArguments], base + ["--do_train", "false"])  # no fixed switches: as before
    assert not args.do_train


def test_abbreviated_flags_are_refused(tmp_path):
    # argparse took `--do_pred` for `--do_predict`, past the switch checks, which read flags by their full names.
    fixed = {"do_predict": (False, "it writes no predictions.")}
    with pytest.raises((ValueError, SystemExit)):
        parse_args([TrainingArguments], ["--output_dir", "out", "--do_pred"], fixed_switches=fixed)
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nreport_to: [tensorboard]\n")
    with pytest.raises((ValueError, SystemExit)):  # `--report_t none` was lost under the file's list
        parse_args([TrainingArguments], [str(config), "--report_t", "none"])


def test_config_lists_empty_or_for_list_fields_reach_the_arguments(tmp_path):
    config = tmp_path / "run.yaml"
    # An empty list keeps the default for every field (a multi-valued one made argparse exit); optim_target_modules
    # takes a list, which a comma-joined string is not (Transformers reads that as one pattern).
    config.write_text("output_dir: out\nreport_to: none\nlabel_names: []\nteacher_weights: []\n"
                      "optim_target_modules: [attention, intermediate]\n")
    (args,) = parse_args([DistillationArguments], [str(config)])
    assert args.label_names is None and args.teacher_weights is None
    assert args.optim_target_modules == ["attention", "intermediate"]
