"""Redis errors are not all a lost connection: wait, pause the worker, or fail the job (unit tests)."""

from __future__ import annotations

import pytest
from redis import exceptions as rx

from worker.redisfaults import RedisTrouble, as_worker_fault, classify_redis_error


@pytest.mark.parametrize(
    ("error", "trouble"),
    [
        (rx.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), RedisTrouble.UNAVAILABLE),
        (rx.TimeoutError("Timeout reading from socket"), RedisTrouble.UNAVAILABLE),
        (rx.BusyLoadingError("Redis is loading the dataset in memory"), RedisTrouble.UNAVAILABLE),
        (rx.ResponseError("BUSY Redis is busy running a script."), RedisTrouble.UNAVAILABLE),
        (rx.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."), RedisTrouble.REFUSING),
        (rx.ReadOnlyError("READONLY You can't write against a read only replica."), RedisTrouble.REFUSING),
        (rx.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."), RedisTrouble.REFUSING),
        (rx.NoPermissionError("NOPERM this user has no permissions to run the 'xadd' command"), RedisTrouble.REFUSING),
        (rx.AuthenticationError("WRONGPASS invalid username-password pair"), RedisTrouble.REFUSING),
        (rx.ResponseError("ERR Error running script (call to f_1): @user_script:7: OOM command not allowed"), RedisTrouble.REFUSING),
        (rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), RedisTrouble.DATA),
        (rx.ResponseError("ERR user_script:3: Script attempted to access nonexistent global variable"), RedisTrouble.DATA),
        (rx.DataError("Invalid input of type: 'NoneType'"), RedisTrouble.DATA),
    ],
)
def test_each_redis_error_gets_its_kind(error: rx.RedisError, trouble: RedisTrouble) -> None:
    assert trouble is classify_redis_error(error)


def test_a_refusing_redis_becomes_a_worker_fault_naming_what_it_refused() -> None:
    fault = as_worker_fault(rx.ReadOnlyError("READONLY You can't write against a read only replica."))
    assert "redis_readonly" == fault.cause
    assert "read only replica" in fault.message
    assert "redis_oom" == as_worker_fault(rx.OutOfMemoryError("OOM command not allowed")).cause
