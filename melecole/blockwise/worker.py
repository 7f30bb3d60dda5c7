"""``python -m melecole.blockwise.worker FILE [CONTEXT]``: one worker of a blockwise run, started by a launcher
(see :func:`melecole.blockwise.run.serve_blocks`)."""

import sys

from melecole.blockwise.run import serve_blocks

if __name__ == "__main__":
    serve_blocks(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
