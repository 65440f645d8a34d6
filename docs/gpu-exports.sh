# The two bundles the GPU benchmark serves (docs/gpu.md): run in the background on the device.
python3 -m distill_serve export --stand-in --out /tmp/demo --quiet &&
python3 -c "
from pathlib import Path
from distill_serve.export.demo import make_demo_checkpoint, make_demo_vocoder
make_demo_checkpoint(Path('/tmp/full.distill'))
make_demo_vocoder(Path('/tmp/bigvgan_full'), channels=1536)  # the full 44 kHz config
" &&
python3 -m distill_serve export --checkpoint /tmp/full.distill --vocoder /tmp/bigvgan_full \
  --fp16 --out /tmp/full --quiet && echo EXPORTS DONE
