"""Shared-memory segments are private to their group: mode 0600, owner-only, unguessable names that
vanish after setup, and a forged segment (wrong magic, nonce, owner or mode) is refused."""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import Any

import pytest
from shm_segments import SHM_DIR, assert_no_new_segments, moecomm_segments

from moecomm import _C


def _open_in_thread(rank: int, world_size: int, nonce: int, names: list[str], timeout_s: float) -> dict[str, Any]:
    """Starts ``_C.ShmGroup(...)`` in a thread; the dict gets "group" or "error" when it returns."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["group"] = _C.ShmGroup(rank, world_size, nonce, names, timeout_s)
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    outcome["thread"] = threading.Thread(target=body)
    outcome["thread"].start()
    return outcome


def _wait_for_file(name: str, seconds: float = 5.0) -> str:
    path = os.path.join(SHM_DIR, name.lstrip("/"))
    end = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)
    return path


def _forge(name: str, payload: bytes, mode: int = 0o600) -> None:
    path = os.path.join(SHM_DIR, name.lstrip("/"))
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    os.fchmod(fd, mode)
    os.write(fd, payload)
    os.close(fd)


def test_shm_live_segment_is_0600_and_closed_to_other_users() -> None:
    before = moecomm_segments()
    names = [_C.shm_random_name(), _C.shm_random_name()]
    opening = _open_in_thread(0, 2, _C.shm_random_nonce(), names, 2.0)  # rank 1 never comes
    path = _wait_for_file(names[0])
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    if os.geteuid() == 0:
        child = os.fork()
        if child == 0:  # as "nobody": opening the live segment must fail
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.open(path, os.O_RDONLY)
                code = 1
            except PermissionError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "another user could open a live segment"
    opening["thread"].join()
    assert "rank 1 did not create its shared-memory segment" in str(opening["error"])
    assert_no_new_segments(before)  # a failed setup unlinks every name of the group


def test_shm_setup_leaves_nothing_to_attach_to() -> None:
    before = moecomm_segments()
    names = [_C.shm_random_name(), _C.shm_random_name()]
    nonce = _C.shm_random_nonce()
    ranks = [_open_in_thread(r, 2, nonce, names, 5.0) for r in range(2)]
    for rank in ranks:
        rank["thread"].join()
    groups = [rank["group"] for rank in ranks]
    assert groups[0].own_segment_mode() == (0o600, os.geteuid())
    assert not any(os.path.exists(os.path.join(SHM_DIR, n.lstrip("/"))) for n in names)
    assert_no_new_segments(before)
    # Even knowing both names and the nonce, a third party cannot join: the names are gone.
    intruder = _open_in_thread(1, 2, nonce, names, 0.5)
    intruder["thread"].join()
    assert "rank 0 did not create its shared-memory segment" in str(intruder["error"])
    for group in groups:
        group.close()
    assert_no_new_segments(before)


@pytest.mark.parametrize(
    "forgery,message",
    [
        (b"\x01" * 65536, "is not a moecomm shm header"),
        (None, "belongs to another group (nonce mismatch)"),
    ],
)
def test_shm_forged_or_foreign_segment_is_refused(forgery: bytes | None, message: str) -> None:
    before = moecomm_segments()
    names = [_C.shm_random_name(), _C.shm_random_name()]
    if forgery is not None:
        _forge(names[1], forgery)
        victim = _open_in_thread(0, 2, _C.shm_random_nonce(), names, 3.0)
        victim["thread"].join()
        assert message in str(victim["error"]), victim
        assert isinstance(victim["error"], _C.ShmError)
    else:  # rank 1 of another group (another nonce) under the expected name
        ranks = [_open_in_thread(0, 2, 1111, names, 3.0), _open_in_thread(1, 2, 2222, names, 3.0)]
        for rank in ranks:
            rank["thread"].join()
        # neither joins the other; whichever maps first refuses (and its failure unlinks both names)
        assert all("group" not in rank and isinstance(rank["error"], _C.ShmError) for rank in ranks), ranks
        assert any(message in str(rank["error"]) for rank in ranks), ranks
    assert_no_new_segments(before)


def test_shm_segment_open_to_others_is_refused() -> None:
    before = moecomm_segments()
    names = [_C.shm_random_name(), _C.shm_random_name()]
    _forge(names[1], b"\x00" * 65536, mode=0o644)
    victim = _open_in_thread(0, 2, _C.shm_random_nonce(), names, 3.0)
    victim["thread"].join()
    assert "accessible by other users" in str(victim["error"])
    assert_no_new_segments(before)


def test_shm_existing_name_is_never_reused() -> None:
    before = moecomm_segments()
    names = [_C.shm_random_name()]
    _forge(names[0], b"\x00" * 4096)
    with pytest.raises(_C.ShmError, match="already exists: refusing"):
        _C.ShmGroup(0, 1, 7, names, 1.0)
    assert_no_new_segments(before)


@pytest.mark.parametrize(
    "names,message",
    [(["/moecomm-xyz"], "names\\[0\\]"), (["/etc/passwd"], "names\\[0\\]"), ([], "names")],
)
def test_shm_bad_names_rejected_by_argument(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _C.ShmGroup(0, 1, 7, names, 1.0)


def test_shm_random_names_are_unguessable() -> None:
    names = {_C.shm_random_name() for _ in range(1000)}
    assert len(names) == 1000
    assert all(len(n) == len("/moecomm-") + 32 and int(n[9:], 16) >= 0 for n in names)
    assert len({_C.shm_random_nonce() for _ in range(1000)}) == 1000
