"""Test software written for ECS against a real ecs-imds: a pytest plugin (`plugin`), the
server it starts (`ImdsServer`), what a test may change (`FleetAdmin`), and a sandbox
where any program is an instance (`Sandbox`, also `ecs-imds sandbox`).

    def test_reads_credentials(ecs_imds):
        ecs_imds.admin.set_options(ecs_imds.addresses["127.0.0.1"], http_tokens="required")
        ...

README "Testing your code against ecs-imds" has a worked example.
"""

from ecs_imds.testing.admin import FleetAdmin
from ecs_imds.testing.sandbox import Sandbox, SandboxUnavailable
from ecs_imds.testing.server import Fleet, ImdsServer

__all__ = ["Fleet", "FleetAdmin", "ImdsServer", "Sandbox", "SandboxUnavailable"]
