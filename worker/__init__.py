"""The feedwork worker SDK.

    from worker import Worker, Retry, Fail

    def resize(task):
        return make_thumbnail(task.payload)

    Worker(target="localhost:50051", queue="images", handler=resize, concurrency=8).run()

or from the command line: `python -m worker --queue images --handler myapp.jobs:resize`.
"""

from worker.runner import Worker, WorkerCounters
from worker.task import Fail, Retry, Task

__all__ = ["Fail", "Retry", "Task", "Worker", "WorkerCounters"]
