def pytest_configure(config):
    config.addinivalue_line("markers", "every_step: kill -9 at every step of a run (make faults; slow)")
