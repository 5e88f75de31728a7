"""Turn a training checkpoint into a release: `python tools/release.py CKPT OUT.safetensors`.

The release holds the EMA weights in fp16 (half the size, same accuracy: the loader
casts back to fp32) and, as metadata, everything needed to rebuild the model.
"""

import sys

from perception.checkpoints import load_model, save_release

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[0])
    loaded = load_model(sys.argv[1])
    print(save_release(loaded.model.half(), loaded.meta, sys.argv[2]))
