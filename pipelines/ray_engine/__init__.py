"""The Ray engine of `ue protect`: BEO's rounds where the data is, resumable, the same maths as ue_core.

    engine.py     ingest the source into the work directory (a Ray task → Parquet shards), run or resume
                  the rounds, finish: the release streamed from the work directory a batch at a time
                  (release_pairs; ue_core.methods.beo.release_summary_of_batches), so the driver never holds
                  every image; a baseline as one Ray task
    rounds.py     one round: surrogate → per step features → estimator → ascent → the round written
    trainer.py    the surrogate: one Ray Train run for the whole job, ue_core.methods.beo.train_surrogate
    passes.py     the job's pass actors (one per GPU, else per node): φ(x + δ) and ue_core.methods.beo.pixel_step
                  on the state blocks their node holds
    estimator.py  the exact estimator's two passes as tasks over row blocks spread over the nodes, or
                  every other estimator in one task (ue_core.methods.beo.exact_stats / exact_gradient /
                  estimate_step)
    probe.py      the mixed efficacy probe (ue_core.efficacy) as one task on a round's state
    state.py      the state rows, the surrogate spec, and JobState: the work directory that makes a job
                  resumable (job.json, ingest/, rounds/round-NNNNN/ with round.json written last)
    resources.py  the pass actors, tasks and the trainer sized from what the cluster reports (CPU and GPU
                  shares)

The state (δ, steps and, under Adam, the per-sample moments, keyed by index) lives in Parquet shards in the
work directory; a round hands its state to the next in the object store, laid out as a read of those
shards would be (state.canonical_layout), so an uninterrupted and a resumed run see the same blocks in the
same order. Fixed costs matter on small machines (2 cores here): the job starts one Ray Train run for all
its rounds and one pool of pass actors; the estimator's tasks reuse Ray's worker processes (bench/README.md
has the measurements).
"""

from pipelines.ray_engine.engine import protect_in_one_task, protect_on_ray

__all__ = ["protect_in_one_task", "protect_on_ray"]
