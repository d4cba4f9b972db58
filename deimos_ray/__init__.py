"""deimos_ray: deep clustering of large unlabelled image collections on Ray.

``deimos_ray.DeepClusterer`` is the scikit-learn face (:mod:`deimos_ray.estimator`).
The package is organised by concept::

    deimos_ray/
      config.py          frozen dataclasses of every job (data, scaling, restarts, model), YAML, overrides
      job.py             the job spine: data -> train -> assign -> post-process -> account -> score
      algorithms/        dac.py, dec.py, desom.py (one Algorithm each; DESOM's level 2), base.py
      data/              sources/ (one module per format), prepare.py, preprocess.py, metadata.py, augment.py,
                         features.py (backbone actors), feature_cache.py
      models/            dac.py (networks, schedules), dec.py, desom.py, som.py (the SOM layer), autoencoder.py,
                         backbones.py (pretrained feature extractors)
      losses/            dac.py (the pair loss), dec.py (soft assignment, target, KL)
      train/             dac_loop.py, dec_loop.py, desom_loop.py (train_loop_per_worker), driver.py
                         (TorchTrainer), common.py, collective.py, checkpoint.py
      restarts.py        restarts on Ray Train and their consensus files; consensus.py the matching
      assign.py          model actors -> Parquet, staged then renamed
      apply.py           a finished run assigns new images (jobs/assign.py)
      report/            page.py (DIR/report/index.html), pictures.py (image grids, DESOM's maps)
      identity.py        what a run folder holds, checked before a rerun resumes; files.py atomic writes;
                         errors.py the one-line user error
      scoring.py, metrics.py, baselines.py   the score table, the scores, k-means and Ward
      tune.py            sweeps: Ray Tune trials through run_prepared, the objective in one reference space
      cli.py, runtime.py the flags every job shares; ray.init for laptop, cluster and job submit
      estimator.py       DeepClusterer: the scikit-learn face over the job spine and apply.py
    jobs/                train_dac.py, train_dec.py, train_desom.py, tune_sweep.py, assign.py, report.py,
                         desom_report.py
    configs/             one commented YAML per job
    bench/               quality.py, features.py, concurrent_restarts.py, ingest.py, train_overhead.py; RESULTS.md
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: ``import deimos_ray`` stays free of Ray, torch and sklearn.
    if name == "DeepClusterer":
        from deimos_ray.estimator import DeepClusterer

        return DeepClusterer
    raise AttributeError(f"module 'deimos_ray' has no attribute {name!r}")
