"""Open an mmfree device — a real board on a serial port, or the simulated board — for a
model: check that the model fits, connect, identify, load the weights unless the device
already holds them, and hand back the :class:`~mmfree.tools.interface.Interface`.

The simulated board is the same :class:`~mmfree.hw.soc.SoC` the boards run (UART included),
compiled by Verilator with its UART pins on a local TCP socket
(:class:`~mmfree.sim.simboard.SimBoard`); it is built once per model and lane count and starts
with that model in its memories, as a bitstream built for the model does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..boards.capacity import BOARDS, fits, fits_image
from ..sim import golden
from ..sim import protocol as proto
from ..sim.engine import EngineImage
from .interface import Interface, LinkError, SerialTransport, SocketTransport

__all__ = ["BoardConfig", "BOARD_CONFIGS", "DeviceSetupError", "engine_image", "open_device",
           "prepare", "sim_verilog", "LinkError"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoardConfig:
    """The SoC a board runs: its decode engine (``"parallel"``, :mod:`mmfree.hw.engine`, with
    its lanes, vector width and weight packing — how the engine stores the ternary weights,
    whatever the model file's, and whether its writer keeps the norms' sums of squares
    (``fused_sums``, docs/engine.md), whether the GLU's gate and up rows go through in pairs
    (``glu_pairs``), whether the other BitLinears' rows do (``row_pairs``) and whether a
    register splits the weight memory's read from the ternary unit (``weight_reg``) and
    whether the f and g BitLinears take the R of i (``shared_r``) and the quotient bits a
    stage of the sigmoid units' dividers (``sigmoid_steps``); or
    ``"serial"``, :mod:`mmfree.hw.serial`, whose lanes are its DOT unit's 4 and whose weights
    are 2-bit words in SPRAM), engine clock, UART baud rate."""
    name: str
    board: proto.Board
    lanes: int
    vector_width: int
    clock_hz: int
    baud: int
    packing: str = "2bit"
    engine: str = "parallel"
    fused_sums: bool = True
    glu_pairs: bool = True
    row_pairs: bool = True
    weight_reg: bool = False
    shared_r: bool = True
    sigmoid_steps: int = 2

    @property
    def engine_options(self) -> dict:
        """:class:`~mmfree.sim.engine.EngineImage`'s keyword arguments for this board's
        parallel engine (all but the lanes)."""
        return dict(vector_width=self.vector_width, packing=self.packing,
                    fused_sums=self.fused_sums, glu_pairs=self.glu_pairs,
                    row_pairs=self.row_pairs, weight_reg=self.weight_reg,
                    shared_r=self.shared_r, sigmoid_steps=self.sigmoid_steps)

    @property
    def divisor(self) -> int:
        return round(self.clock_hz / self.baud)


BOARD_CONFIGS = {
    # 25 MHz oscillator -> PLL 48 MHz; FT231X at 3 Mbaud (16 cycles a bit). 256 lanes, vector
    # width 4 (the normalize/quantize path's multipliers) and 1.6-bit weight rows (the default
    # model's weights and buffers in 205 of 208 DP16KD, with cmem in 24-bit words). The writer
    # keeps the norms' sums of squares (fused_sums), the rows of every BitLinear but the
    # lm_head go through in pairs (glu_pairs, row_pairs), a register splits the weight
    # memory's read from the ternary unit (weight_reg) and another holds the logits in front
    # of the sampler, the f and g BitLinears take i's R (shared_r) and the sigmoid units'
    # dividers give two quotient bits a stage (sigmoid_steps=2): 13,666 cycles a token. That
    # SoC routes with nextpnr's timing-driven placement and routing at seed 12 (DEFAULT_PNR in
    # boards/build.py) at 55.01 MHz, timing met at 48 MHz (2026-11-27; seeds 8-11 stalled in
    # router2). Without shared_r and sigmoid_steps (14,026 cycles) it routed at seed 8 at
    # 55.11 MHz (2026-11-26); without the logits' register, at 45 MHz and seed 9, 45.32 MHz
    # (docs/boards.md). 512 lanes take 13,057 cycles with the same options: their SoC placed
    # at 47.63 MHz estimated at seed 12 and stalled in router2 (2026-11-27); 13,417 without
    # shared_r and sigmoid_steps, when their SoC did not route with the rows in pairs (seeds 7 and 8 of 2026-11-26: router2 stalled at 409 and 167
    # overused wires) and with cmem in 24-bit words nextpnr's static placer did not legalise
    # it (seeds 7 and 8); its last routed SoC (rows one a cycle, 14,696 cycles, 38.69 MHz at
    # 36 MHz) is the board's before 2026-11-26.
    "ulx3s-85f": BoardConfig("ulx3s-85f", proto.Board.ULX3S_85F, lanes=256, vector_width=4,
                             clock_hz=48_000_000, baud=3_000_000, packing="1.6bit",
                             weight_reg=True),
    # The 12 MHz oscillator itself (no PLL: the serial engine routes at about 12.2 MHz);
    # FT2232H at 3 Mbaud (4 cycles a bit). The UP5K (5,280 logic cells) runs the serial engine
    # with everything in its four SPRAMs (docs/serial.md).
    "icebreaker": BoardConfig("icebreaker", proto.Board.ICEBREAKER, lanes=4, vector_width=1,
                              clock_hz=12_000_000, baud=3_000_000, engine="serial"),
}


class DeviceSetupError(Exception):
    """The model cannot run on the chosen device; one line. ``status`` is the CLI's exit
    status (1 data, 3 environment)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def engine_image(model, board: BoardConfig):
    """The engine image of ``model`` for ``board`` (an :class:`EngineImage`, or a
    :class:`~mmfree.sim.serial_program.SerialImage` for the serial engine), or
    :class:`DeviceSetupError` if the model does not fit the board's memory (checked before
    anything is opened or sent)."""
    # The bit budget first (cheap: no quantization of a model that is far too big), then the
    # block RAMs the board's SoC would map this image to (the serial engine: its memory words).
    ok, detail = fits(model.config, BOARDS[board.name], board.packing)
    if ok and board.engine == "serial":
        from ..sim.serial_program import SerialImage
        try:
            return SerialImage(golden.prepare(model))
        except ValueError as error:
            raise DeviceSetupError(f"the model does not fit the {board.name}: {error}") from None
    if ok:
        try:
            image = EngineImage(golden.prepare(model), board.lanes, **board.engine_options)
        except ValueError as error:
            raise DeviceSetupError(f"the model cannot run on the engine: {error}") from None
        ok, detail = fits_image(image, BOARDS[board.name])
    if not ok:
        raise DeviceSetupError(f"the model does not fit the {board.name}: {detail}")
    return image


def sim_verilog(image: EngineImage, board: BoardConfig, *,
                frame_timeout: int | None = None) -> str:
    """Verilog of the simulated board's SoC (top module ``top``). ``frame_timeout``: cycles
    of silence after which a partial frame is abandoned (default: the SoC's, 4096 byte
    times); a host's retry interval must be longer than this."""
    from ..hw.soc import SoC
    from ..sim.toolchain import amaranth_to_verilog
    soc = SoC(image, board=proto.Board.SIM, clock_hz=board.clock_hz, divisor=board.divisor,
              timeout=frame_timeout)
    return amaranth_to_verilog(soc, name="top")


def _check_identity(ident: proto.Identity, image: EngineImage) -> None:
    if ident.version != proto.VERSION:
        raise DeviceSetupError(f"the device speaks protocol version {ident.version}, this host "
                               f"{proto.VERSION}: rebuild the bitstream with this version")
    if ident.config_hash != proto.config_hash(image):
        cfg = image.im.config
        raise DeviceSetupError(
            f"the model (d={cfg.hidden_size} L={cfg.num_layers} I={cfg.intermediate_size} "
            f"V={cfg.vocab_size} {cfg.hidden_act}, {image.lanes} lanes) does not fit the "
            f"device's engine ({ident.describe()}); build a bitstream for this model")


def prepare(iface: Interface, image: EngineImage, *,
            progress: Callable[[int, int], None] | None = None, force_load: bool = False):
    """Bring the device behind ``iface`` to idle, check that ``image`` fits its engine (no
    weight byte is sent otherwise) and load the weights unless the device already holds
    them. Returns ``(identity, LoadStats)``."""
    from .interface import LoadStats
    iface.sync()
    ident = iface.identify()
    _check_identity(ident, image)
    words = image.load_words()
    digest = proto.model_hash(words)
    if ident.model_valid and ident.model_hash == digest and not force_load:
        logger.info("the device already holds this model (hash %016x)", digest)
        return ident, LoadStats(len(words), True, 0.0, 0)
    done = 0

    def step(nbytes):
        nonlocal done
        done += nbytes
        if progress is not None:
            progress(done, 4 * len(words))

    return ident, iface.load(words, digest, progress=step)


@contextlib.contextmanager
def open_device(model, *, backend: str, board: str = "ulx3s-85f", port: str | None = None,
                baud: int | None = None, progress: Callable[[int, int], None] | None = None,
                force_load: bool = False, lanes: int | None = None,
                build_model=None) -> Iterator[tuple[Interface, dict]]:
    """Open a device for ``model`` and make sure it holds the model's weights.

    Yields ``(interface, info)``; ``info`` has ``identity``, ``image`` and ``load``
    (:class:`~mmfree.tools.interface.LoadStats`, ``skipped`` if the device already had the
    model). ``progress(done_bytes, total_bytes)`` is called during a weight load.

    Simulated board only: ``lanes`` overrides the board's lane count, and ``build_model`` is
    the model its memories start with (default ``model``; another model of the same shape
    makes the weights go through the link)."""
    if board not in BOARD_CONFIGS:
        raise DeviceSetupError(f"unknown board {board!r}; choose from "
                               f"{', '.join(BOARD_CONFIGS)}", 2)
    config = BOARD_CONFIGS[board]
    if lanes is not None:
        from dataclasses import replace
        config = replace(config, lanes=lanes)
    image = engine_image(model, config)
    built = image if build_model is None else engine_image(build_model, config)
    with contextlib.ExitStack() as stack:
        if backend == "sim":
            from ..sim.simboard import SimBoard, SimBoardError
            from ..sim.toolchain import ToolchainError
            try:
                sim = stack.enter_context(SimBoard(sim_verilog(built, config),
                                                   divisor=config.divisor,
                                                   name=f"soc-{board}"))
            except ToolchainError as error:
                raise DeviceSetupError(str(error), 3) from None
            except SimBoardError as error:
                raise DeviceSetupError(f"simulated board: {error}", 3) from None
            transport = stack.enter_context(SocketTransport(sim.address))
            # Simulated time runs about 50x slower than the board's clock.
            iface = Interface(transport, timeout=30.0, step_timeout=10.0)
        elif backend == "board":
            if port is None:
                raise DeviceSetupError("--backend board needs --port (e.g. /dev/ttyUSB0)", 2)
            transport = stack.enter_context(SerialTransport(port, baud or config.baud))
            iface = Interface(transport, timeout=1.0, step_timeout=0.5)
        else:
            raise ValueError(f"backend must be 'sim' or 'board', not {backend!r}")
        ident, stats = prepare(iface, image, progress=progress, force_load=force_load)
        yield iface, {"identity": ident, "image": image, "load": stats,
                      "sim": sim if backend == "sim" else None}

