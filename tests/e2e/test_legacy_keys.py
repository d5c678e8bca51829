"""Config files, overrides and recorded jobs of the layout before the budget had a section of its own
(``beo.pga.eps`` / ``beo.pga.norm``, now ``budget.eps`` / ``budget.norm``) load to the same config."""

import pytest
import yaml

from pipelines.config import load_protect_config
from pipelines.ray_engine.state import DatasetInfo, JobState
from pipelines.storage import WorkDir
from ue_core.config import to_dict
from ue_core.errors import InvalidInputError
from ue_core.pga import Budget


def write(path, content: dict) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_an_old_config_file_sets_the_budget(tmp_path):
    config = load_protect_config("fashion-mnist", write(tmp_path / "old.yaml", {"beo": {"pga": {"eps": "16/255"}}}))
    assert config.budget.eps == 16 / 255
    assert config.beo.pga.update == "sign" and config.beo.pga.step_size == 2 / 255  # the preset's rule stays
    l2 = load_protect_config(config_file=write(tmp_path / "l2.yaml", {"beo": {"pga": {"eps": 0.5, "norm": "l2"}}}))
    assert l2.budget == Budget(eps=0.5, norm="l2")


def test_an_old_override_sets_the_budget():
    config = load_protect_config("fashion-mnist", overrides={"beo.pga.eps": "16/255"})
    assert config == load_protect_config("fashion-mnist", overrides={"budget.eps": "16/255"})
    assert config.budget.eps == 16 / 255
    same = load_protect_config("fashion-mnist", overrides={"beo.pga.eps": "16/255", "budget.eps": 16 / 255})
    assert same == config  # both keys with one value: no conflict


@pytest.mark.parametrize("content, overrides", [
    ({"budget": {"eps": "8/255"}, "beo": {"pga": {"eps": "16/255"}}}, {}),
    ({}, {"budget.eps": "8/255", "beo.pga.eps": "16/255"}),
])
def test_the_old_and_the_new_key_with_different_values_is_one_line(tmp_path, content, overrides):
    with pytest.raises(InvalidInputError) as error:
        load_protect_config("fashion-mnist", write(tmp_path / "both.yaml", content), overrides)
    message = str(error.value)
    assert "beo.pga.eps and budget.eps" in message and "\n" not in message


def test_a_job_recorded_with_the_old_keys_resumes(tmp_path):
    """The Ray engine's job.json of an interrupted job reads in today's keys: the same job resumes, another
    budget is still another job."""
    config = load_protect_config("fashion-mnist")
    old = to_dict(config)
    old["beo"]["pga"] |= old.pop("budget")  # the old layout: the budget inside beo.pga
    (tmp_path / "work").mkdir()
    job = JobState(WorkDir(str(tmp_path / "work")))
    info = DatasetInfo((28, 28, 1), 10, 2000, "fashion-mnist")
    job.record_job({"source": "src", "config": old}, info)
    assert job.recorded_info({"source": "src", "config": to_dict(config)}) == info
    other = load_protect_config("fashion-mnist", overrides={"budget.eps": "16/255"})
    with pytest.raises(InvalidInputError, match="belongs to a job with another source or config"):
        job.recorded_info({"source": "src", "config": to_dict(other)})
