"""A LiveKit voice agent with our avatar, run as LiveKit's docs run agents:

    pip install -e ".[livekit]"
    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    EMBEDTALK_AVATAR=alice.etk python examples/livekit_agent.py dev      # the avatar renders in this process
    # or, with avatar workers (`embedtalk-sdk livekit-worker avatars/` on one or more machines):
    EMBEDTALK_AVATAR_ID=alice python examples/livekit_agent.py start

The speech pipeline is LiveKit Inference's (STT, LLM, TTS by model name; it needs LiveKit Cloud
credentials or your own plugins in their place: `AGENT_STT`, `AGENT_LLM`, `AGENT_TTS`). Then open
the room in any LiveKit client (e.g. the Agents Playground): the avatar's video and voice are
published on behalf of the agent.
"""
from __future__ import annotations

import os

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli

from embedtalk_sdk.integrations.livekit_avatar import AvatarSession

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session = AgentSession(stt=os.getenv("AGENT_STT", "deepgram/nova-3"),
                           llm=os.getenv("AGENT_LLM", "openai/gpt-4.1-mini"),
                           tts=os.getenv("AGENT_TTS", "cartesia/sonic-2"))
    if os.getenv("EMBEDTALK_AVATAR_ID"):   # on an avatar worker, dispatched by LiveKit
        avatar = AvatarSession(avatar_id=os.environ["EMBEDTALK_AVATAR_ID"], worker=True)
    else:                                  # in this process
        avatar = AvatarSession(os.environ.get("EMBEDTALK_AVATAR", "avatar.etk"))
    await avatar.start(session, room=ctx.room)
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face. Keep answers short."),
                        room=ctx.room)
    await session.generate_reply(instructions="Greet the user in one sentence.")


if __name__ == "__main__":
    cli.run_app(server)
