"""ecs-imds: an instance metadata service speaking Alibaba Cloud ECS's protocol."""

__version__ = "0.1.0"
