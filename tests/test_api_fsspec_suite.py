"""fsspec's own abstract test suite (copy, get, put, open, pipe) against `cowfs://`.

Every test of it runs as written over a local store, and none is skipped: with autocommit each
call has the outcome it has on a plain filesystem (one commit per call). Over SeaweedFS run get,
put, open and pipe (the calls that move bytes between a disk and the store, and exclusive
creation), less the glob edge-case parametrizations; not run there, to keep the suite's time:
copy (a copy inside the lake moves no bytes, it re-uses the entry's chunk references, so it is the
same code over every backend) and the 96 glob edge cases (fsspec's glob expansion through `find`
and `info`, backend-independent too; at ~1 s of S3 commits each they would cost 1.5 minutes).

The scenario fixtures build their trees inside one transaction (one commit instead of one per
`touch`): the same files, made faster; what the tests then call is autocommitted as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from cowfs.filesystem import CowFileSystem
from cowfs.lake import Lake


def _in_one_commit(build: Callable[..., str]) -> Callable[..., Iterator[str]]:
    def fixture(self, fs: CowFileSystem, fs_join, fs_path: str) -> Iterator[str]:  # noqa: ANN001
        with fs.transaction:
            source = build(self, fs, fs_join, fs_path)
        yield source
        fs.rm(source, recursive=True)

    return pytest.fixture(fixture)


class CowFixtures(AbstractFixtures):
    backend = "local"

    @pytest.fixture
    def fs(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[CowFileSystem]:
        monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
        s3 = self.backend == "s3"
        url = request.getfixturevalue("s3_url") if s3 else str(tmp_path / "store")
        with Lake.open(url, create=True) as lake:
            lake.create_repo("suite")
        fs = CowFileSystem(store=url, skip_instance_cache=True)
        yield fs
        fs.close()

    @pytest.fixture
    def fs_path(self) -> str:
        return "suite@main"

    fs_bulk_operations_scenario_0 = _in_one_commit(AbstractFixtures._bulk_operations_scenario_0)
    fs_glob_edge_cases_files = _in_one_commit(AbstractFixtures._glob_edge_cases_files)
    fs_dir_and_file_with_same_name_prefix = _in_one_commit(
        AbstractFixtures._dir_and_file_with_same_name_prefix
    )
    fs_10_files_with_hashed_names = _in_one_commit(AbstractFixtures._10_files_with_hashed_names)


class TestCowCopy(AbstractCopyTests, CowFixtures):
    pass


class TestCowGet(AbstractGetTests, CowFixtures):
    pass


class TestCowPut(AbstractPutTests, CowFixtures):
    pass


class TestCowOpen(AbstractOpenTests, CowFixtures):
    pass


class TestCowPipe(AbstractPipeTests, CowFixtures):
    pass


@pytest.mark.s3
class TestCowGetS3(TestCowGet):
    backend = "s3"
    test_get_glob_edge_cases = None


@pytest.mark.s3
class TestCowPutS3(TestCowPut):
    backend = "s3"
    test_put_glob_edge_cases = None


@pytest.mark.s3
class TestCowOpenS3(TestCowOpen):
    backend = "s3"


@pytest.mark.s3
class TestCowPipeS3(TestCowPipe):
    backend = "s3"
