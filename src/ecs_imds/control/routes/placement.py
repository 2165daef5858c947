"""Where an instance runs: its dedicated host (ECS's DedicatedHostId), which decides the
servers that serve it (a server scoped to hosts serves only their instances). Moving it is
ECS's ModifyInstanceDeployment: the servers of the old host stop serving it and those of
the new one start, within the change feed's usual time."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ecs_imds.control import fleet
from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import responses
from ecs_imds.control.routes.instances import INSTANCE_PATH, change
from ecs_imds.protocol.model import Instance
from ecs_imds.store import Store

router = APIRouter(tags=["placement"])
DEPLOYMENT_PATH = INSTANCE_PATH + "/deployment"


def deployment_of(store: Store, instance_id: str) -> s.DeploymentOut:
    inst = Instance.from_doc(fleet.read_instance(store, instance_id).doc)
    return s.DeploymentOut(InstanceId=instance_id, DedicatedHostId=inst.dedicated_host_id)


@router.get(DEPLOYMENT_PATH, response_model=s.DeploymentOut, responses=responses(404),
            operation_id="DescribeInstanceDeployment")
async def get_deployment(instance_id: str, ctx: Ctx) -> s.DeploymentOut:
    return await ctx.run(deployment_of, ctx.store, instance_id)


@router.put(DEPLOYMENT_PATH, response_model=s.DeploymentOut,
            responses=responses(400, 404, 412), operation_id="ModifyInstanceDeployment",
            summary="ModifyInstanceDeployment: move the instance to another host")
async def move(instance_id: str, body: s.Deployment, request: Request,
               ctx: Ctx) -> s.DeploymentOut:
    await change(ctx, request, instance_id, "modify-instance-deployment",
                 lambda doc: doc.__setitem__("dedicated-host-id", body.DedicatedHostId),
                 host=body.DedicatedHostId)
    return s.DeploymentOut(InstanceId=instance_id, DedicatedHostId=body.DedicatedHostId)
