"""The README is the newcomer's reference: every setting and training budget is listed there."""

from dataclasses import fields
from pathlib import Path

from learning.config import Budgets
from service.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_service_setting_is_in_the_readme():
    missing = [f"ASSISTANT_{name.upper()}" for name in Settings.model_fields
               if f"`ASSISTANT_{name.upper()}`" not in README]
    assert not missing, f"add these settings to README.md: {missing}"


def test_every_training_budget_is_in_the_readme():
    missing = [Budgets.env_name(f.name) for f in fields(Budgets) if f"`{Budgets.env_name(f.name)}`" not in README]
    assert not missing, f"add these budgets to README.md: {missing}"
