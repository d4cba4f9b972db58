"""deimos_ray: deep clustering of large unlabelled image collections on Ray.

``deimos_ray.DeepClusterer`` is the scikit-learn face (:mod:`deimos_ray.estimator`).
The package is organised by concept (``CONTRIBUTING.md``: adding an algorithm)::

    deimos_ray/
      algorithms/        one Algorithm per method (dac.py, dec.py, desom.py with DESOM's level 2) and
                         its job config, flags, predictor, restart combination and report pictures; base.py
      job.py             the job spine: data -> train -> assign -> post-process -> account -> score
      run_folder.py      the run folder: open (identity, config, rejected), finish (metrics.json), read
      config.py          the shared frozen dataclasses (data, features, scaling, restarts, JobConfig)
      config_io.py       configs from and to dicts and YAML, dotted overrides, type checks
      data/              sources/ (one module per format), prepare.py, preprocess.py, metadata.py, augment.py,
                         features.py (backbone actors), feature_cache.py
      models/            dac.py (networks, schedules), dec.py, desom.py, som.py (the SOM layer), autoencoder.py,
                         backbones.py (pretrained feature extractors)
      losses/            dac.py (the pair loss), dec.py (soft assignment, target, KL), som.py (the SOM loss)
      train/             dac_loop.py, dec_loop.py, desom_loop.py (train_loop_per_worker), driver.py
                         (TorchTrainer), restarts.py (several trainings), common.py, collective.py, checkpoint.py
      assignments.py     the assignments/ folder: model actors -> Parquet, staged then renamed
      consensus.py       one clustering of several trainings: matching, averaging, voting, the files
      new_images.py      a finished run assigns new images (deimos-ray assign)
      report/            page.py (DIR/report/index.html), members.py (a page per cluster), input_map.py,
                         montages.py, map.py, html.py, pictures.py
      sweep/             driver.py (Ray Tune trials through run_prepared), objective.py, space.py
      identity.py        what a run folder holds, checked before a rerun resumes; files.py atomic writes;
                         errors.py the one-line user error
      scoring.py, metrics.py, baselines.py   the score table, the scores, k-means and Ward
      commands/          deimos-ray: train, sweep, assign, report, export (the parsers jobs/*.py share)
      cli.py, runtime.py the training flags and main; ray.init for laptop, cluster and job submit
      preflight.py       the checks of a job's inputs before Ray starts; progress.py what the console shows
      estimator.py       DeepClusterer: the scikit-learn face over the job spine and new_images.py
    jobs/                train_dac.py, ... : the commands as scripts, for ray job submit
    configs/             one commented YAML per job
    bench/               quality.py, features.py, concurrent_restarts.py, ingest.py, train_overhead.py,
                         tune_k.py, same_assignments.py; RESULTS.md
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: ``import deimos_ray`` stays free of Ray, torch and sklearn.
    if name == "DeepClusterer":
        from deimos_ray.estimator import DeepClusterer  # torch, Ray and sklearn: on first use only

        return DeepClusterer
    raise AttributeError(f"module 'deimos_ray' has no attribute {name!r}")
