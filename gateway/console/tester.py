"""The route tester: paste an event (or pick a contract sample) and see exactly what
``callback-gateway explain`` prints for it (the same function, `explain_body`): routes matched
and why, enrichments, filter decisions, the payload each destination would receive. A dry run:
nothing is stored or sent. A POST only because a pasted body can be large."""

from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse

from gateway import samples
from gateway.console.render import form_of, gateway_of, page
from gateway.errors import UsageError
from gateway.routing.explain import explain_body


async def tester(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    sources = list(ctx.config.sources)
    form = form_of(request)
    source = form.get("source") or (sources[0] if sources else "")
    sample = form.get("sample") or ""
    body = form.get("event") or ""
    result = error = None
    if request.method == "POST":
        try:
            if not body.strip():
                if not sample:
                    raise UsageError("paste an event, or pick a sample")
                body = samples.load(sample).decode()
            result = await explain_body(ctx.loaded, body.encode(), source or None, clock=ctx.clock)
        except UsageError as e:
            error = str(e)
    return page(
        request,
        "tester.html",
        422 if error else 200,
        section="tester",
        sources=sources,
        source=source,
        samples=samples.names(),
        sample=sample,
        body=body,
        result=result,
        error=error,
    )
