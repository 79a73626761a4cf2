"""Ctrl-C during training: a request checked at step boundaries; a second Ctrl-C at once."""
import os
import signal

import pytest

from edgesplit.run import interrupt


def test_the_first_ctrl_c_is_a_request_the_second_stops_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interrupt.stop_at_step_boundaries():
        interrupt.check()  # nothing pressed yet
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: no exception here
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary for the handler
    assert signal.getsignal(signal.SIGINT) is before
    interrupt.check()  # the request ends with the run
