"""MLflow: one run per pipeline run with params, loss and validation curves, test metrics, checkpoint, tags."""

from __future__ import annotations

import mlflow
import yaml

from melecole.cli import main
from melecole.tracking import flatten
from tests.conftest import tiny_params_dict


def test_train_and_evaluate_share_one_run(tmp_path, prepared, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 4, "tracking.enabled": True,
                                                        "tracking.experiment": "test-exp"})))
    run_file = tmp_path / "run.txt"
    ckpt = tmp_path / "ckpt.pt"
    assert main(["train", "--params", str(params), "--data", str(prepared), "--out", str(ckpt),
                 "--run-file", str(run_file)]) == 0
    assert main(["predict", "--params", str(params), "--checkpoint", str(ckpt), "--raw",
                 f"{prepared / 'test.h5'}:raw", "--out", str(tmp_path / "p.h5")]) == 0
    assert main(["segment", "--params", str(params), "--predictions", str(tmp_path / "p.h5"),
                 "--out", str(tmp_path / "s.h5")]) == 0
    assert main(["evaluate", "--seg", f"{tmp_path / 's.h5'}:segmentation", "--baselines", "--gt", f"{prepared / 'test.h5'}:labels",
                 "--run-file", str(run_file)]) == 0
    capsys.readouterr()

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("test-exp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == run_file.read_text().strip()
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "4"
    assert run.data.params["model.base_channels"] == "4"
    assert run.data.tags["dvc_experiment"] == "tiny-exp"
    assert {"test_vi_split", "test_vi_merge", "test_arand", "test_watershed_arand"} <= set(run.data.metrics)
    baselines = {"agglomeration-embedding", "mws-embedding"} - {run.data.tags["segment_method"]}
    assert {f"test_{name}_vi_split" for name in baselines} <= set(run.data.metrics)
    # Every calibrated variant's validation scores and knob, the configured agglomeration's included.
    assert {"final_val_agglomeration-boundary_threshold", "final_val_mws-embedding_bias",
            "final_val_agglomeration-embedding_vi_sum", "final_val_vi_sum"} <= set(run.data.metrics)
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert loss_steps == [1, 2, 3, 4]
    val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_vi_split")]
    assert val_steps == [2, 4]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")]
    assert artifacts == ["checkpoint/ckpt.pt"]
    # Names tell runs apart; VI sums sit beside split and merge; the model-training view.
    assert run.info.run_name.startswith("tiny-exp-4steps-")
    sums = client.get_metric_history(run.info.run_id, "val_vi_sum")
    splits = client.get_metric_history(run.info.run_id, "val_vi_split")
    merges = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_vi_merge")}
    assert [m.step for m in sums] == [2, 4]
    assert all(abs(s.value - (m.value + merges[m.step])) < 1e-9 for s, m in zip(sums, splits))
    assert run.data.metrics["test_vi_sum"] == run.data.metrics["test_vi_split"] + run.data.metrics["test_vi_merge"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The model in MLflow's model list, the volumes as dataset inputs.
    models = client.search_logged_models([experiment.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]
    contexts = sorted(tag.value for d in run.inputs.dataset_inputs for tag in d.tags if tag.key == "mlflow.data.context")
    assert contexts == ["training", "validation"], contexts
    # A picture per validation, at its step.
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert sum(path.endswith(".png") and "validation" in path for path in images) == 2, images
    # The curves for dvc plots, beside the checkpoint.
    curves = (tmp_path / "plots" / "validation.csv").read_text().splitlines()
    assert curves[0] == "step,vi_split,vi_merge,vi_sum,arand" and [r.split(",")[0] for r in curves[1:]] == ["2", "4"]


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "x"}


def test_two_runs_starting_at_once_on_a_new_store(tmp_path, monkeypatch):
    import concurrent.futures
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = ("from melecole.tracking import Tracker; "
            "print(Tracker.start('race', {'a': 1}).run_id)")
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                                         text=True, timeout=300), range(2)))
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_experiment_by_name("race").experiment_id])) == 2
