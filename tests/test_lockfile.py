"""requirements.txt (what Heroku installs) matches pyproject.toml's runtime dependencies; a
stale one fails here, offline, until `make lock` is run."""

from tests.support.lockfile import ROOT, dependencies, problems, render

DEPENDENCIES = ["starlette>=1.0,<2", "sqlalchemy[asyncio]>=2.0.36,<3"]
FREEZE = "starlette==1.10.0\nSQLAlchemy==2.1.9\ngreenlet==3.5.6\nanyio==4.16.0\n"


def test_requirements_txt_matches_pyproject():
    text = (ROOT / "requirements.txt").read_text()
    assert problems(text, dependencies()) == [], "requirements.txt is stale: run `make lock`"


def test_python_version_is_one_heroku_understands():
    version = (ROOT / ".python-version").read_text().strip()
    major, minor = version.split(".")
    assert major == "3" and int(minor) >= 11, "requires-python is >=3.11"


def test_a_fresh_lock_has_no_problems_and_ends_with_the_project():
    text = render(FREEZE, DEPENDENCIES)
    assert problems(text, DEPENDENCIES) == []
    lines = text.splitlines()
    assert lines[-1] == "." and lines[-2] == "starlette==1.10.0", "sorted pins, then fluxhook"


def test_spacing_and_order_of_the_dependencies_do_not_make_it_stale():
    text = render(FREEZE, DEPENDENCIES)
    assert problems(text, ["sqlalchemy[asyncio] >= 2.0.36, < 3", "starlette >=1.0,<2"]) == []


def test_a_changed_dependency_list_is_stale():
    text = render(FREEZE, DEPENDENCIES)
    (problem,) = problems(text, ["starlette>=1.0,<2", "sqlalchemy[asyncio]>=2.0.40,<3"])
    assert "changed since requirements.txt was generated" in problem


def test_a_pin_outside_its_specifier_and_a_missing_pin_are_named():
    text = render(FREEZE.replace("starlette==1.10.0\n", "starlette==2.0\n"), DEPENDENCIES)
    text = text.replace("SQLAlchemy==2.1.9\n", "")
    assert problems(text, DEPENDENCIES) == [
        "starlette==2.0 does not satisfy starlette<2,>=1.0",
        "sqlalchemy is a runtime dependency but is not pinned",
    ]


def test_unpinned_editable_or_missing_project_lines_are_refused():
    text = render(FREEZE, DEPENDENCIES)
    bad = text.replace("anyio==4.16.0", "anyio>=4").replace("\n.\n", "\n-e .\n")
    assert problems(bad, DEPENDENCIES) == [
        "'anyio>=4' is not a name==version pin",
        "the last line must be '.' (fluxhook itself, not editable)",
    ]
