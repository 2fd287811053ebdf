import signal, time
from reliability.accounting import Ledger, Sensors
def test_group_member_sigterm(start_worker, ledger, sensors):
    ws = [start_worker(worker_id=f"w-s{i}", shared_group="g") for i in range(3)]
    pub = sensors([f"s{i}" for i in range(6)]).start(rate=2000)
    time.sleep(1.5)
    t = time.monotonic()
    ws[2].signal(signal.SIGTERM)
    assert ws[2].wait(20) == 0
    time.sleep(1.5)
    pub.stop()
    time.sleep(2)
    r = ledger.report()
    print(r.summary())
    for k in r.missing: print(k, ledger.published_at[k] - t)
    print(ws[2].log()[-600:])
