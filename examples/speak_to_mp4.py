"""Make an avatar say a wav file and save the video with sound.

    python examples/speak_to_mp4.py demo_out/avatar.etk demo_out/sentence.wav out.mp4
"""
import sys

from embedtalk_sdk import Avatar

bundle, wav, out = sys.argv[1:4]
avatar = Avatar.load(bundle)  # backend="auto": the fastest one that works here
avatar.speak(wav, out=out)
print(f"{out}: {avatar.width}x{avatar.height} at {avatar.fps} fps")
