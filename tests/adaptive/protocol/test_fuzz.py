"""Fuzzing every MQTT message decoder with valid messages mutated at any depth.

Each decoder's contract: a record of its type or :class:`SchemaError`, nothing else, and whatever it
accepts re-encodes to a payload its JSON Schema accepts. Together with ``tests/adaptive/test_handler_fuzz.py``
(the daemons' message handlers) and ``tests/adaptive/runtime/test_wire.py`` (the data-plane decoder) this is
well over 10,000 generated cases per CI run.
"""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive.protocol.messages import SchemaError
from tests.adaptive.protocol.test_messages import RECORDS, decode_or_schema_error, schema

CASES = 1500  # per message kind
VALIDATORS = {kind: jsonschema.Draft202012Validator(schema(kind)) for kind in RECORDS}

json_values = st.recursive(  # small values keep generation cheap: the depth comes from mutate()
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8)
FUZZ = settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutate(doc, data, depth=0):
    """``doc`` with one change somewhere inside: a value replaced, a key removed or added, a list
    element replaced, dropped or appended."""
    if isinstance(doc, dict) and doc:
        key = data.draw(st.sampled_from(sorted(doc)))
        action = data.draw(st.sampled_from(["replace", "descend", "delete", "add"]))
        if action == "delete":
            del doc[key]
        elif action == "add":
            doc[data.draw(st.text(max_size=12))] = data.draw(json_values)
        elif action == "descend" and isinstance(doc[key], dict | list) and doc[key] and depth < 4:
            doc[key] = mutate(doc[key], data, depth + 1)
        else:
            doc[key] = data.draw(json_values)
        return doc
    if isinstance(doc, list) and doc:
        i = data.draw(st.integers(0, len(doc) - 1))
        action = data.draw(st.sampled_from(["replace", "descend", "delete", "append"]))
        if action == "delete":
            del doc[i]
        elif action == "append":
            doc.append(data.draw(json_values))
        elif action == "descend" and isinstance(doc[i], dict | list) and doc[i] and depth < 4:
            doc[i] = mutate(doc[i], data, depth + 1)
        else:
            doc[i] = data.draw(json_values)
        return doc
    return data.draw(json_values)


@pytest.mark.parametrize("kind", list(RECORDS))
@FUZZ
@given(data=st.data())
def test_mutated_messages_decode_or_raise_schema_error(kind, data):
    doc = mutate(copy.deepcopy(json.loads(RECORDS[kind].encode())), data)
    for _ in range(data.draw(st.integers(0, 2))):  # sometimes two or three changes
        doc = mutate(doc, data)
    try:
        payload = json.dumps(doc, allow_nan=True).encode()
    except (TypeError, ValueError):
        return
    record = decode_or_schema_error(type(RECORDS[kind]), payload)
    if record is not None:
        VALIDATORS[kind].validate(json.loads(record.encode()))


def test_schema_error_is_a_value_error():
    """Callers catch ``SchemaError``; it is also a ``ValueError`` for those who catch that."""
    assert issubclass(SchemaError, ValueError)
