"""The SDK's structured-output helpers against a real server: `chat.completions.stream` with a
Pydantic `response_format`, and eight concurrent `parse` calls with eight different models
(one batch in the runner, each row under its own grammar). Random weights, bounded fields."""

from __future__ import annotations

import asyncio
from typing import Literal

import openai
import pydantic
import pytest
from conftest import server_config
from models import build_models

MODEL = "local/tiny-demo"
MESSAGES = [{"role": "user", "content": "Answer in JSON"}]
Short = pydantic.constr(max_length=8)
Small = pydantic.conint(ge=0, le=99)


class City(pydantic.BaseModel):
    name: Short
    population: Small


class Pet(pydantic.BaseModel):
    kind: Literal["cat", "dog", "fish"]
    age: Small


class Flag(pydantic.BaseModel):
    on: bool


class Point(pydantic.BaseModel):
    x: Small
    y: Small


class Tags(pydantic.BaseModel):
    tags: list[Literal["a", "b", "c"]] = pydantic.Field(max_length=3)


class Person(pydantic.BaseModel):
    name: Short
    pet: Pet


class Choice(pydantic.BaseModel):
    pick: Literal["yes", "no"]
    why: Short


class Score(pydantic.BaseModel):
    team: Short
    score: Small
    won: bool


MODELS = [City, Pet, Flag, Point, Tags, Person, Choice, Score]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("structured-sdk-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


async def test_streamed_parse_gives_the_pydantic_model(sdk):
    client = await sdk()
    for seed in (1, 2):
        async with client.chat.completions.stream(
            model=MODEL, messages=MESSAGES, response_format=Person, max_tokens=200, temperature=1.0, seed=seed
        ) as stream:
            deltas = [e.delta async for e in stream if e.type == "content.delta"]
            final = await stream.get_final_completion()
        person = final.choices[0].message.parsed
        assert isinstance(person, Person) and len(deltas) > 1  # it did stream
        assert "".join(deltas) == final.choices[0].message.content


async def test_eight_concurrent_parses_with_eight_schemas(sdk):
    client = await sdk()
    replies = await asyncio.gather(
        *(
            client.chat.completions.parse(
                model=MODEL, messages=MESSAGES, response_format=model, max_tokens=200, temperature=1.0, seed=i
            )
            for i, model in enumerate(MODELS)
        )
    )
    for model, reply in zip(MODELS, replies):
        parsed = reply.choices[0].message.parsed
        assert isinstance(parsed, model), (model, reply.choices[0].message.content)
        assert model.model_validate_json(reply.choices[0].message.content) == parsed
