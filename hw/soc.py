"""The system on chip of every board: UART, framing, link controller and decode engine.

The board tops (:mod:`mmfree.boards.top`) add the clock (PLL), the pins and the LEDs; the
simulated board (:mod:`mmfree.sim.simboard`) runs this same component in Verilator with its
UART pins on a TCP socket.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.vendor import SiliconBluePlatform

from mmfree.hw.engine import Engine
from mmfree.hw.framing import FrameReceiver, FrameTransmitter
from mmfree.hw.link import LinkController
from mmfree.hw.uart import UART
from mmfree.sim.engine import EngineImage
from mmfree.sim.serial_program import SerialImage
from mmfree.sim.protocol import Board, Identity, identity_for

__all__ = ["SoC"]

TX_FIFO_DEPTH = 64      # bytes; none with the serial engine (a UP5K has no logic cells to spare)


class SoC(wiring.Component):
    """UART (8N1, ``divisor`` cycles a bit) -> :class:`~mmfree.hw.framing.FrameReceiver`
    -> :class:`~mmfree.hw.link.LinkController` -> the decode engine, and back through
    :class:`~mmfree.hw.framing.FrameTransmitter`, a 64-byte FIFO (none with the serial
    engine: the transmitter waits for the UART, and so does the controller) and the UART.
    The engine is :class:`~mmfree.hw.engine.Engine` for an
    :class:`~mmfree.sim.engine.EngineImage` (its memories start with the model),
    :class:`~mmfree.hw.serial.SerialEngine` for a
    :class:`~mmfree.sim.serial_program.SerialImage` (its memories start empty — the data
    memory is SPRAM on an iCE40, which no bitstream initializes — and the host loads the
    model's program and data).

    Members: ``uart_rx`` (into the device), ``uart_tx``, ``leds`` (:class:`~mmfree.hw.link.LED`).
    A frame with no byte for ``timeout`` cycles (default: 4096 byte times) is abandoned.
    """

    def __init__(self, image: EngineImage, *, board: Board, clock_hz: int, divisor: int,
                 timeout: int | None = None):
        if not isinstance(image, (EngineImage, SerialImage)):
            raise TypeError(f"image must be an EngineImage or a SerialImage, not {image!r}")
        self._image = image
        self._divisor = divisor
        self._timeout = timeout if timeout is not None else 4096 * 10 * divisor
        self._identity = identity_for(image, board=board, clock_hz=clock_hz, divisor=divisor)
        super().__init__({
            "uart_rx": In(1, init=1),
            "uart_tx": Out(1, init=1),
            "leds":    Out(4),
        })

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def image(self) -> EngineImage:
        return self._image

    def _engine(self, platform):
        image = self._image
        if isinstance(image, SerialImage):
            from mmfree.hw.serial import SerialEngine
            # The program memory could start with the model's program, but the data memory
            # cannot start with its data, so the host loads both: the gateware depends on the
            # model's geometry only (one bitstream, one Verilator build, for every model).
            return SerialEngine(token_bits=image.token_bits, debug=False,
                                spram=isinstance(platform, SiliconBluePlatform))
        return Engine(image, debug=False)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = uart = UART(divisor=self._divisor)
        m.submodules.rx = rx = FrameReceiver(timeout=self._timeout)
        m.submodules.tx = tx = FrameTransmitter()
        m.submodules.ctrl = ctrl = LinkController(identity=self._identity)
        m.submodules.engine = engine = self._engine(platform)

        m.d.comb += [
            uart.rx.eq(self.uart_rx),
            self.uart_tx.eq(uart.tx),
            rx.line_error.eq(uart.rx_error | uart.rx_overrun),
            self.leds.eq(ctrl.leds),
            # frames in
            rx.free.eq(ctrl.free), rx.free_bank.eq(ctrl.free_bank),
            rx.rd_addr.eq(ctrl.rd_addr), rx.rd_en.eq(ctrl.rd_en), ctrl.rd_data.eq(rx.rd_data),
            # the engine
            ctrl.busy.eq(engine.busy), ctrl.cycles.eq(engine.cycles),
            engine.x0.eq(ctrl.x0), engine.seed.eq(ctrl.seed),
            engine.seed_load.eq(ctrl.seed_load), engine.reset_state.eq(ctrl.reset_state),
        ]
        if isinstance(self._image, SerialImage):
            wiring.connect(m, tx.out, uart.tx_data)
        else:                                  # frames out through the FIFO
            m.submodules.tx_fifo = tx_fifo = SyncFIFOBuffered(width=8, depth=TX_FIFO_DEPTH)
            m.d.comb += [
                tx_fifo.w_data.eq(tx.out.payload), tx_fifo.w_en.eq(tx.out.valid),
                tx.out.ready.eq(tx_fifo.w_rdy),
                uart.tx_data.payload.eq(tx_fifo.r_data), uart.tx_data.valid.eq(tx_fifo.r_rdy),
                tx_fifo.r_en.eq(uart.tx_data.ready),
            ]
        wiring.connect(m, uart.rx_data, rx.data)
        wiring.connect(m, rx.frame, ctrl.frame)
        wiring.connect(m, ctrl.tx_header, tx.header)
        wiring.connect(m, ctrl.tx_payload, tx.payload)
        wiring.connect(m, ctrl.step, engine.step)
        wiring.connect(m, engine.token, ctrl.token)
        wiring.connect(m, ctrl.load, engine.load)
        return m
