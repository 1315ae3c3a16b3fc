"""The decode engine: one whole HGRN-Bit token step in hardware, bit-exact with
:func:`mmfree.sim.golden.decode_step` and the sampler of :func:`mmfree.sim.decoding.generate`."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.arith import split_mul
from mmfree.hw.mixer import EmbedUnit, GateUnit, ProductUnit, ResidualAdd, saturate
from mmfree.hw.normquant import NormQuant
from mmfree.hw.requantizer import Requantizer
from mmfree.hw.sampler import Sampler
from mmfree.hw.sigmoid import Sigmoid
from mmfree.hw.skid import SkidBuffer
from mmfree.hw.ternary import TernaryAccumulate
from mmfree.hw.vector_reader import VectorReader
from mmfree.sim.engine import (CMEM_BITS, INSTR_FIELDS, INSTR_WORDS, PROG_WORDS, REGION,
                               REGION_SHIFT, EngineImage, Op)
from mmfree.sim.golden import ACT_BITS, LOGIT_BITS, NORM_W_BITS, SAMPLER_N
from mmfree.hw.shiftmax import x0_shape

__all__ = ["Engine", "INSTR_LAYOUT", "engine_members"]

INSTR_LAYOUT = data.StructLayout({
    name: (signed(width) if is_signed else unsigned(width))
    for name, width, is_signed in INSTR_FIELDS})
#: The instruction without the fields that come last in :data:`INSTR_FIELDS` and that a
#: program may leave at zero (``reuse``): an engine whose program does not use them decodes
#: this, and elaborates to the netlist it had before they existed (docs/boards.md: a netlist
#: of the same logic under other names routes differently).
_INSTR_LAYOUT_BASE = data.StructLayout({
    name: (signed(width) if is_signed else unsigned(width))
    for name, width, is_signed in INSTR_FIELDS if name != "reuse"})


def _select(key, keys, values):
    """``values[k]`` where ``key == keys[k]`` (the keys are distinct constants), else 0."""
    out = 0
    for k, v in zip(keys, values):
        out = Mux(key == k, v, out)
    return out


def _or_all(values):
    """The OR of ``values`` (at most one non-zero: a one-hot select's AND-OR)."""
    out = 0
    for v in values:
        out = out | v
    return out


class _State(enum.Enum, shape=4):
    IDLE    = 0
    FETCH   = 1    # read the instruction at pc
    DECODE  = 2    # latch it; skip it, end the step, or start it
    START   = 3    # start the op's readers
    EMB_M   = 4    # EMBED: take the row multiplier emb_m[token], start the row
    RUN     = 5    # wait for the op's last result
    TERN    = 6    # BITLINEAR/HEAD: the q vector is complete; start the rows
    WAIT_T  = 7    # BITLINEAR/HEAD: wait for the last row (HEAD: the sampled token)


def engine_members(token_bits: int) -> dict:
    """The ports every decode engine has (this one and :class:`mmfree.hw.serial.SerialEngine`),
    which :class:`mmfree.hw.link.LinkController` drives; see :class:`Engine`."""
    return {
        "step":        In(stream.Signature(data.StructLayout({
            "token": unsigned(token_bits), "emit": 1}))),
        "token":       Out(stream.Signature(unsigned(token_bits))),
        "x0":          In(x0_shape(SAMPLER_N)),
        "seed":        In(32),
        "seed_load":   In(1),
        "reset_state": In(1),
        "load":        In(stream.Signature(data.StructLayout({"addr": 32, "data": 32}))),
        "busy":        Out(1),
        "cycles":      Out(32),
    }


class Engine(wiring.Component):
    """Executes the decode step of an :class:`~mmfree.sim.engine.EngineImage` (one model,
    one lane count), one instruction at a time.

    Datapath (shared by every instruction): two beat readers (vector and norm weights, ``W``
    elements per transfer, ``W = image.width``) feed :class:`~mmfree.hw.normquant.NormQuant`
    (into the q buffer, or back into the vector memory for a stand-alone RMSNorm); the rows
    of :class:`~mmfree.hw.ternary.TernaryAccumulate` (``lanes`` lanes, one row a chunk, or
    ``2**group`` short rows a chunk where the image groups them; weights from ``tmem``) go
    through :class:`~mmfree.hw.requantizer.Requantizer` (two rows a cycle from grouped chunks
    of the GLU and of the other BitLinears, with the image's ``paired_glu`` and
    ``paired_rows``); three vector-memory element readers, a constant reader and an embedding
    reader feed the sigmoid/SiLU(/GELU) units and the elementwise units of
    :mod:`mmfree.hw.mixer`; one writer stores results in the vector memory (an element, a pair
    of rows or of residual sums, or a beat of ``W``). The schedule and its cycle count are
    documented in ``docs/engine.md`` and computed by
    :func:`mmfree.sim.engine.step_cycles`.

    Latency: a step takes :func:`~mmfree.sim.engine.step_cycles` cycles from the ``step``
    transfer until ``busy`` falls. Throughput: one step at a time.

    Members
    -------
    step : In(stream.Signature(StructLayout({"token": ..., "emit": 1})))
        One decode step per transfer (taken while idle). ``emit = 0`` skips the final norm,
        the lm_head and the sampler (prompt tokens before the last).
    token : Out(stream.Signature(unsigned(...)))
        The token chosen at the end of each step with ``emit = 1``.
    x0, seed, seed_load :
        The sampler's temperature constant (0: greedy) and PRNG seed/strobe (see
        :class:`~mmfree.hw.sampler.Sampler`); change them only while idle.
    reset_state : In(1)
        Strobe while idle: the recurrent state of every layer becomes zero.
    load : In(stream.Signature(StructLayout({"addr": 32, "data": 32})))
        Writes one 32-bit word of the image (:meth:`EngineImage.load_words`); taken while idle,
        a word a cycle (``ready`` is a register: low in the cycle after a step is taken or
        the engine returns to idle), written the next cycle; ``step`` waits while a word is
        offered or written.
    busy : Out(1)
    cycles : Out(32)
        Cycles of the last step, from the ``step`` transfer to the return to idle.
    peek_addr, peek_data :
        Debug read port of the vector memory (one cycle latency), with ``debug=True``.
    """

    def __init__(self, image: EngineImage, *, debug: bool = True):
        if not isinstance(image, EngineImage):
            raise TypeError(f"image must be an EngineImage, not {image!r}")
        self._image = image
        self._debug = debug
        cfg = image.im.config
        self._vbits = max(1, (image.vmem_depth - 1).bit_length())
        members = engine_members(max(1, (cfg.vocab_size - 1).bit_length()))
        if debug:
            members["peek_addr"] = In(unsigned(self._vbits))
            members["peek_data"] = Out(signed(ACT_BITS))
        super().__init__(members)

    @property
    def image(self) -> EngineImage:
        return self._image

    def elaborate(self, platform):
        m = Module()
        image, cfg = self._image, self._image.im.config
        lanes, d = image.lanes, cfg.hidden_size
        regions = image.regions

        # --- memories -------------------------------------------------------------------
        # Memory widths are what is used, not the load port's power-of-two strides: every
        # bit over a multiple of the block RAM's 36 costs a whole column of blocks.
        m.submodules.prog = prog = Memory(shape=unsigned(32 * PROG_WORDS),
                                          depth=len(image.program), init=image.prog_init())
        W = image.width
        wbits = (W - 1).bit_length()
        m.submodules.cmem = cmem = Memory(shape=unsigned(CMEM_BITS * W),
                                          depth=len(image.cmem) // W, init=image.cmem_rows())
        m.submodules.emb = emb = Memory(shape=unsigned(32), depth=len(image.emb),
                                        init=image.emb)
        m.submodules.tmem = tmem = Memory(shape=unsigned(image.chunk_bits), depth=len(image.tmem),
                                          init=image.tmem)
        m.submodules.vmem = vmem = Memory(shape=unsigned(32 * W), depth=image.vmem_depth // W,
                                          init=[])
        q_depth = -(-image.n_max // lanes)
        m.submodules.qbuf = qbuf = Memory(shape=unsigned(8 * lanes), depth=q_depth, init=[])

        # --- units ----------------------------------------------------------------------
        vbits = self._vbits
        m.submodules.r0 = r0 = VectorReader(shape=signed(ACT_BITS), addr_width=vbits)
        # Rows in pairs (docs/engine.md): the GLU's gate row and its up row a cycle
        # (`paired`), two rows of any other BitLinear a cycle, stored (or added to the
        # residual, which r1 then reads two elements a transfer) together (`paired_rows`).
        # Without `paired_rows` the engine elaborates to the netlist it had before them
        # (the `if paired_rows` choices below): the ULX3S-85F's routed SoC, which a netlist of
        # the same logic but other signals does not reproduce (docs/boards.md).
        paired, paired_rows = image.paired_glu, image.paired_rows
        m.submodules.r1 = r1 = VectorReader(
            shape=unsigned(2 * ACT_BITS) if paired_rows else signed(ACT_BITS), addr_width=vbits)
        m.submodules.r2 = r2 = VectorReader(shape=signed(ACT_BITS), addr_width=vbits)
        cbits = max(1, (len(image.cmem) - 1).bit_length())
        m.submodules.rc = rc = VectorReader(shape=unsigned(32), addr_width=cbits)
        ebits = max(1, (len(image.emb) - 1).bit_length())
        m.submodules.re = re = VectorReader(shape=unsigned(32), addr_width=ebits)
        # Beat readers: W elements per transfer, into NormQuant.
        rows_bits = max(1, (image.vmem_depth // W).bit_length())
        m.submodules.rw = rw = VectorReader(shape=unsigned(32 * W), addr_width=rows_bits)
        crow_bits = max(1, (len(image.cmem) // W).bit_length())
        m.submodules.rcw = rcw = VectorReader(shape=unsigned(CMEM_BITS * W), addr_width=crow_bits)

        # `reuse` (the image's shared_r): a BitLinear takes the R of the one before it.
        reuse = image.reuses_r
        m.submodules.nq = nq = NormQuant(width=W, n_max=image.n_max,
                                         sum_in=image.fused_sums, reuse=reuse)
        groups = image.groups
        m.submodules.tern = tern = TernaryAccumulate(
            lanes=lanes, n=image.n_max, packing=image.packing, groups=groups,
            pairs=paired or paired_rows, input_reg=image.weight_reg)
        m.submodules.requant = requant = Requantizer(acc_width=tern.acc_bits, out_bits=ACT_BITS,
                                                     pairs=paired or paired_rows)
        steps = image.sigmoid_steps         # the activations' divider: bits a stage
        m.submodules.sig = sig = Sigmoid(mode="sigmoid", steps=steps)
        m.submodules.silu = silu = Sigmoid(mode="silu", steps=steps)
        if cfg.hidden_act == "silu":
            act = silu
        else:
            m.submodules.act = act = Sigmoid(mode="gelu", steps=steps)
        m.submodules.gate = gate = GateUnit()
        m.submodules.product = product = ProductUnit()
        m.submodules.residual = residual = ResidualAdd(pairs=paired_rows)
        m.submodules.embed = embed = EmbedUnit()
        m.submodules.sampler = sampler = Sampler(vocab=cfg.vocab_size, logit_width=LOGIT_BITS)

        # --- sequencer state ------------------------------------------------------------
        state = Signal(_State)
        pc = Signal(range(len(image.program) + 1))
        layout = INSTR_LAYOUT if reuse else _INSTR_LAYOUT_BASE
        instr = Signal(layout)
        token = Signal.like(self.step.payload.token)
        emit = Signal()
        h_valid = Signal(max(1, cfg.num_layers))
        count = Signal(16)            # results written by the current op
        q_count = Signal(16)          # q elements written into the q buffer
        ymax = Signal(32)
        start = Signal()              # strobe: start the op's readers
        cycles = Signal(32)

        prog_rd = prog.read_port()
        m.d.comb += [prog_rd.addr.eq(pc), prog_rd.en.eq(state == _State.FETCH)]
        decoded = Signal(layout)
        m.d.comb += decoded.eq(prog_rd.data[:layout.size])

        # The op, decoded into a flag per use and registered with the instruction (in DECODE):
        # a compare of `op`'s bits would otherwise open every select of the datapath, a route
        # across the device before its first LUT. The flags of an op are mutually exclusive.
        def op_flags(instr):
            bl = instr.op == Op.BITLINEAR
            head = instr.op == Op.HEAD
            return {
                "embed":    instr.op == Op.EMBED,
                "norm":     instr.op == Op.NORM,
                "mlgru_h":  instr.op == Op.MLGRU_H,
                "mlgru_o":  instr.op == Op.MLGRU_O,
                "head":     head,
                "tern":     bl | head,                          # ternary rows
                "norm_ops": bl | head | (instr.op == Op.NORM),  # NormQuant runs
                "mlgru":    (instr.op == Op.MLGRU_H) | (instr.op == Op.MLGRU_O),
                "glu":      bl & instr.glu,
                "add":      bl & ~instr.glu & instr.add,
                "plain":    bl & ~instr.glu & ~instr.add,       # requantized rows stored
                "product":  (instr.op == Op.MLGRU_O) | (bl & instr.glu),
                # rows in pairs: grouped rows of the GLU (with `paired`) or of another
                # BitLinear (without `paired_rows`, the GLU's pairs follow `glu` alone)
                **({"pair": bl & (instr.group != 0) & ((instr.glu if paired else 0) | ~instr.glu)}
                   if paired_rows else {}),
            }
        is_ = {name: Signal(name=f"is_{name}") for name in op_flags(decoded)}
        m.d.comb += self.busy.eq(state != _State.IDLE)
        m.d.comb += self.cycles.eq(cycles)
        with m.If(state != _State.IDLE):
            m.d.sync += cycles.eq(cycles + 1)

        # --- readers: bases and counts per op ------------------------------------------
        for reader in (r0, r1, r2, rc, re):
            m.d.comb += reader.start.eq(start)
        m.d.comb += [
            r0.base.eq(instr.src),
            r0.count.eq(Mux(is_["mlgru_h"], instr.n_in, 0)),
            r2.base.eq(instr.aux),
            r2.count.eq(Mux(is_["mlgru"], instr.n_in, 0)),
            rc.base.eq(instr.cbase),
            re.base.eq(token * (d // 4)),
            re.count.eq(Mux(is_["embed"] & (state == _State.EMB_M), d // 4, 0)),
        ]
        with m.If(is_["mlgru_h"]):
            m.d.comb += [r1.base.eq(regions["I"]), r1.count.eq(instr.n_in),
                         rc.count.eq(instr.n_in)]
        with m.Elif(is_["mlgru_o"]):
            m.d.comb += [r1.base.eq(regions["GN"]), r1.count.eq(instr.n_in)]
        with m.Elif(is_["tern"]):
            if paired_rows:                                   # r1 counts pairs
                m.d.comb += [r1.base.eq(Mux(is_["pair"], instr.aux >> 1, instr.aux)),
                             r1.count.eq(Mux(instr.add, Mux(is_["pair"], instr.n_out >> 1,
                                                            instr.n_out), 0))]
            else:
                m.d.comb += [r1.base.eq(instr.aux),
                             r1.count.eq(Mux(instr.add, instr.n_out, 0))]
        with m.Elif(is_["embed"]):
            m.d.comb += [rc.base.eq(instr.cbase + token), rc.count.eq(state == _State.START)]

        # --- read ports -----------------------------------------------------------------
        # Every read port of a memory is a copy of it in block RAM, so readers that never run
        # in the same instruction share one (the engine runs one instruction at a time): the
        # beat readers (norm ops) with r0 (MLGRU_H only) on vmem and with rc (MLGRU_H, EMBED)
        # on cmem. Element readers address a row (addr >> log2(W)) and take the element's word
        # (its index registered with the read, so it follows the held output).
        norm_ops = is_["norm_ops"]
        for name, reader, memory, beats_reader in (("r0", r0, vmem, rw), ("r1", r1, vmem, None),
                                                   ("r2", r2, vmem, None), ("rc", rc, cmem, rcw),
                                                   ("re", re, emb, None)):
            port = memory.read_port()
            bits = CMEM_BITS if memory is cmem else 32
            words = len(port.data) // bits
            addr, en = reader.addr >> (words - 1).bit_length(), reader.en
            # r1 in pairs (a residual add of rows in pairs): reader.addr counts pairs.
            pair_mode = is_["pair"] & is_["add"] if reader is r1 and paired_rows else None
            if pair_mode is not None:
                addr = Mux(pair_mode, reader.addr >> (wbits - 1), addr)
            if beats_reader is not None:
                addr = Mux(norm_ops, beats_reader.addr, addr)
                en = Mux(norm_ops, beats_reader.en, en)
                m.d.comb += beats_reader.data.eq(port.data)
            m.d.comb += [port.addr.eq(addr), port.en.eq(en)]
            if words > 1:
                word = Signal(range(words), name=f"{name}_word")
                with m.If(reader.en):
                    m.d.sync += word.eq(reader.addr[:(words - 1).bit_length()])
                element = port.data.word_select(word, bits)
                if pair_mode is not None:
                    pair = Signal(range(max(2, words // 2)), name=f"{name}_pair")
                    if wbits > 1:
                        with m.If(reader.en):
                            m.d.sync += pair.eq(reader.addr[:wbits - 1])
                    element = Mux(pair_mode, port.data.word_select(pair, 64), element)
                m.d.comb += reader.data.eq(element)
            else:
                m.d.comb += reader.data.eq(port.data)

        # --- NormQuant (RMSNorm, quantizer) -> q buffer or vmem ---------------------------
        beats = (instr.n_in + (W - 1)) >> wbits
        tail = instr.n_in[:wbits] if W > 1 else Const(0, 1)     # elements of a partial beat
        for reader, base in ((rw, instr.src), (rcw, instr.cbase)):
            m.d.comb += [reader.start.eq(start), reader.base.eq(base >> wbits),
                         reader.count.eq(Mux(norm_ops, beats, 0))]
        m.d.comb += [
            nq.eps.eq(instr.eps),
            nq.out_shift.eq(instr.out_shift),
            nq.quantize.eq(~is_["norm"]),          # a stand-alone RMSNorm writes y alone
            *([nq.reuse.eq(instr.reuse)] if reuse else []),
            nq.inp.payload.last.eq(rw.out.payload.last),
            nq.w.payload.eq(Cat(*[rcw.out.payload.data.word_select(j, CMEM_BITS)[:NORM_W_BITS]
                                  for j in range(W)])),
        ]
        for j in range(W):
            # Elements past the vector's end (a partial last beat) enter as zeros.
            keep = ~rw.out.payload.last | (tail == 0) | (j < tail)
            m.d.comb += nq.inp.payload.data[j].eq(
                Mux(keep, rw.out.payload.data.word_select(j, 32).as_signed(), 0))
        with m.If(norm_ops):
            m.d.comb += [
                nq.inp.valid.eq(rw.out.valid), rw.out.ready.eq(nq.inp.ready),
                nq.w.valid.eq(rcw.out.valid), rcw.out.ready.eq(nq.w.ready),
            ]
        q_wr = qbuf.write_port(granularity=8)
        lane_bits = (lanes - 1).bit_length()
        m.d.comb += [
            nq.out.ready.eq(1),
            q_wr.addr.eq(q_count >> lane_bits),
            q_wr.data.eq(Cat(*[nq.out.payload.q[j] for j in range(W)] * (lanes // W))),
        ]
        with m.If(nq.out.valid & is_["tern"]):
            m.d.comb += q_wr.en.eq(Const((1 << W) - 1, lanes) << q_count[:lane_bits]
                                   if lanes > W else (1 << W) - 1)
            # Grouped rows: the beat goes into every segment of lanes >> g (the data is
            # already repeated every W lanes, and W divides the segment).
            for g in groups:
                seg = lanes >> g
                seg_bits = (seg - 1).bit_length()
                with m.If(instr.group == g):
                    mask = (Const((1 << W) - 1, seg) << q_count[:seg_bits])[:seg]
                    m.d.comb += q_wr.en.eq(Cat(*[mask] * (1 << g)))
            m.d.sync += [q_count.eq(q_count + W), ymax.eq(nq.out.payload.ymax)]

        # --- ternary rows -> requantizer (-> residual add) -------------------------------
        rows_total = Signal(32)
        issue = Signal(32)            # chunks issued
        chunk = Signal(16)
        t_rd = tmem.read_port()
        q_rd = qbuf.read_port()
        t_valid = Signal()
        t_last = Signal()
        t_addr = Signal(range(max(2, len(image.tmem))))
        rows_left = Signal(16)        # rows not yet issued (grouped chunks)
        t_rows = Signal(range(tern.max_rows))
        advance = ~t_valid | tern.inp.ready
        m.d.comb += [
            t_rd.addr.eq(t_addr), t_rd.en.eq(advance),
            q_rd.addr.eq(chunk), q_rd.en.eq(advance),
            tern.inp.valid.eq(t_valid),
            tern.inp.payload.w.eq(t_rd.data[:tern.w_bits]),
            tern.inp.payload.q.eq(q_rd.data),
            tern.inp.payload.last.eq(t_last),
        ]
        if groups:
            m.d.comb += [tern.inp.payload.group.eq(instr.group),
                         tern.inp.payload.rows.eq(t_rows)]
        # The pair bit: the registered flag, or (without `paired_rows`) the GLU's bit.
        pair_bit = is_["pair"] if paired_rows else instr.glu
        if paired or paired_rows:
            m.d.comb += tern.inp.payload.pair.eq(pair_bit)
        with m.If(state == _State.TERN):
            m.d.sync += [issue.eq(0), chunk.eq(0), t_addr.eq(instr.tbase), t_valid.eq(0),
                         rows_total.eq(instr.issues), rows_left.eq(instr.n_out)]
        with m.Elif(advance):
            more = (state == _State.WAIT_T) & (issue != rows_total)
            m.d.sync += [t_valid.eq(more), t_last.eq(chunk == instr.chunks - 1)]
            with m.If(more):
                m.d.sync += [issue.eq(issue + 1), t_addr.eq(t_addr + 1),
                             chunk.eq(Mux(chunk == instr.chunks - 1, 0, chunk + 1))]
                for g in groups:
                    with m.If(instr.group == g):
                        per = 1 << g
                        m.d.sync += [rows_left.eq(rows_left - per),
                                     t_rows.eq(Mux(rows_left >= per, per - 1, rows_left - 1))]

        # The requantizer's output goes through a skid buffer: the consumers' ready (joins,
        # FIFO, sampler) stops there instead of running back through the requantizer and the
        # ternary unit to their stall enables.
        m.submodules.rq_skid = rq_skid = SkidBuffer(requant.out.payload.shape())
        wiring.connect(m, requant.out, rq_skid.inp)
        rq_out = rq_skid.out

        row_out = Signal(16)          # rows out of the ternary unit
        with m.If(state == _State.TERN):
            m.d.sync += row_out.eq(0)
        with m.Elif(tern.out.valid & tern.out.ready):
            m.d.sync += row_out.eq(row_out + (Mux(pair_bit, 2, 1) if paired or paired_rows
                                              else 1))
        if paired or paired_rows:
            m.d.comb += [requant.inp.payload.acc.eq(tern.out.payload[0]),
                         requant.inp.payload.acc2.eq(tern.out.payload[1])]
        else:
            m.d.comb += requant.inp.payload.acc.eq(tern.out.payload)
        m.d.comb += [
            requant.inp.valid.eq(tern.out.valid),
            tern.out.ready.eq(requant.inp.ready),
            requant.inp.payload.ymax.eq(ymax),
            requant.inp.payload.m.eq(instr.m),
            requant.inp.payload.k.eq(instr.k),
            requant.inp.payload.first.eq(row_out == 0),
            requant.inp.payload.last.eq(row_out == instr.n_out - 1),
            *([residual.a.payload[0].eq(rq_out.payload.data),
               residual.a.payload[1].eq(rq_out.payload.data2)] if paired_rows else
              [residual.a.payload.eq(rq_out.payload.data)]),
            residual.b.payload.eq(r1.out.payload.data),
        ]
        # The logits reach the sampler through a register (one cycle a token): the saturation
        # and the sampler's compare in one cycle were the SoC's longest path.
        logit_valid = Signal()        # a logit from the requantizer, into the register
        logit_ready = Signal()
        m.d.comb += logit_ready.eq(~sampler.logits.valid | sampler.logits.ready)
        with m.If(logit_ready):
            m.d.sync += [
                sampler.logits.valid.eq(logit_valid),
                sampler.logits.payload.data.eq(saturate(m, rq_out.payload.data, LOGIT_BITS,
                                                        "logit")),
                sampler.logits.payload.first.eq(rq_out.payload.first),
                sampler.logits.payload.last.eq(rq_out.payload.last),
            ]
        # GLU (gate/up rows alternate): gate rows into the activation, up rows into a FIFO
        # that holds them while their gate is in the activation's pipeline.
        m.submodules.up_fifo = up_fifo = SyncFIFOBuffered(width=ACT_BITS, depth=64)
        if not paired:
            parity = Signal()         # the next row out of the requantizer is an up row
            with m.If(state == _State.TERN):
                m.d.sync += parity.eq(0)
            with m.Elif(rq_out.valid & rq_out.ready):
                m.d.sync += parity.eq(~parity)
        m.d.comb += up_fifo.w_data.eq(rq_out.payload.data2 if paired else rq_out.payload.data)
        with m.If(is_["head"]):
            m.d.comb += [logit_valid.eq(rq_out.valid), rq_out.ready.eq(logit_ready)]
        if paired:
            with m.Elif(is_["glu"]):
                # A gate and its up row together: the gate into the activation, the up row
                # into the FIFO, both or neither.
                m.d.comb += [act.inp.valid.eq(rq_out.valid & up_fifo.w_rdy),
                             up_fifo.w_en.eq(rq_out.valid & act.inp.ready),
                             rq_out.ready.eq(act.inp.ready & up_fifo.w_rdy)]
        else:
            with m.Elif(is_["glu"]):
                with m.If(parity):
                    m.d.comb += [up_fifo.w_en.eq(rq_out.valid),
                                 rq_out.ready.eq(up_fifo.w_rdy)]
                with m.Else():
                    m.d.comb += [act.inp.valid.eq(rq_out.valid),
                                 rq_out.ready.eq(act.inp.ready)]

        with m.Elif(is_["add"]):
            m.d.comb += [residual.a.valid.eq(rq_out.valid),
                         rq_out.ready.eq(residual.a.ready),
                         residual.b.valid.eq(r1.out.valid), r1.out.ready.eq(residual.b.ready)]

        # --- sampler --------------------------------------------------------------------
        m.d.comb += [
            sampler.x0.eq(self.x0), sampler.seed.eq(self.seed), sampler.load.eq(self.seed_load),
            self.token.payload.eq(sampler.token.payload),
            self.token.valid.eq(sampler.token.valid),
            sampler.token.ready.eq(self.token.ready),
        ]

        # --- MLGRU and GLU --------------------------------------------------------------
        layer_valid = h_valid.bit_select(instr.layer[:max(1, (cfg.num_layers - 1).bit_length())],
                                         1)
        m.d.comb += [
            sig.frac.eq(instr.frac_a),
            silu.frac.eq(instr.frac_b),
            sig.inp.payload.eq(r0.out.payload),
            gate.sig.payload.eq(sig.out.payload.data),
            gate.silu.payload.eq(silu.out.payload.data),
            gate.h.payload.eq(Mux(layer_valid, r2.out.payload.data, 0)),
            gate.lb.payload.eq(rc.out.payload.data[:21]),
            gate.has_lb.eq(instr.has_lb),
            product.shift.eq(instr.shift[:6]),
        ]
        if act is not silu:
            m.d.comb += act.frac.eq(instr.frac_a)
        with m.If(is_["mlgru_h"]):
            m.d.comb += [
                sig.inp.valid.eq(r0.out.valid), r0.out.ready.eq(sig.inp.ready),
                *([silu.inp.payload.data.eq(r1.out.payload.data[:ACT_BITS]),
                   silu.inp.payload.first.eq(r1.out.payload.first),
                   silu.inp.payload.last.eq(r1.out.payload.last)] if paired_rows else
                  [silu.inp.payload.eq(r1.out.payload)]),
                silu.inp.valid.eq(r1.out.valid), r1.out.ready.eq(silu.inp.ready),
                gate.sig.valid.eq(sig.out.valid), sig.out.ready.eq(gate.sig.ready),
                gate.silu.valid.eq(silu.out.valid), silu.out.ready.eq(gate.silu.ready),
                gate.h.valid.eq(r2.out.valid), r2.out.ready.eq(gate.h.ready),
                gate.lb.valid.eq(rc.out.valid), rc.out.ready.eq(gate.lb.ready),
            ]
        with m.Elif(is_["mlgru_o"]):
            m.d.comb += [
                silu.inp.payload.eq(r2.out.payload),
                silu.inp.valid.eq(r2.out.valid), r2.out.ready.eq(silu.inp.ready),
                product.a.payload.eq(silu.out.payload.data),
                product.a.valid.eq(silu.out.valid), silu.out.ready.eq(product.a.ready),
                product.b.payload.eq(r1.out.payload.data[:ACT_BITS] if paired_rows else
                                     r1.out.payload.data),
                product.b.valid.eq(r1.out.valid), r1.out.ready.eq(product.b.ready),
            ]
        with m.Elif(is_["embed"]):
            byte = Signal(2)
            m.d.comb += [
                embed.q.payload.eq(re.out.payload.data.word_select(byte, 8)),
                embed.q.valid.eq(re.out.valid),
                re.out.ready.eq(embed.q.ready & (byte == 3)),
            ]
            with m.If(embed.q.valid & embed.q.ready):
                m.d.sync += byte.eq(byte + 1)
        with m.If(is_["glu"]):
            if act is silu:
                m.d.comb += silu.frac.eq(instr.frac_a)
            m.d.comb += [
                act.inp.payload.data.eq(rq_out.payload.data),
                act.inp.payload.first.eq(rq_out.payload.first),
                product.a.payload.eq(act.out.payload.data),
                product.a.valid.eq(act.out.valid), act.out.ready.eq(product.a.ready),
                product.b.payload.eq(up_fifo.r_data),
                product.b.valid.eq(up_fifo.r_rdy), up_fifo.r_en.eq(product.b.ready),
            ]
        mult = Signal(15)
        m.d.comb += [embed.mult.eq(mult), embed.shift.eq(instr.shift)]

        # --- the writer -----------------------------------------------------------------
        v_wr = vmem.write_port(granularity=32)
        result = Signal(signed(ACT_BITS))
        result_valid = Signal()
        # One source at a time (the flags are exclusive): an AND-OR of registered selects.
        sources = (("embed", embed.out, embed.out.payload), ("mlgru_h", gate.out, gate.out.payload),
                   ("product", product.out, product.out.payload),
                   ("add", residual.out,
                    residual.out.payload[0] if paired_rows else residual.out.payload),
                   ("plain", rq_out, rq_out.payload.data))
        for flag, port, payload in sources:
            with m.If(is_[flag]):
                m.d.comb += port.ready.eq(1)
        m.d.comb += [
            result.eq(_or_all(Mux(is_[flag], payload, 0) for flag, _, payload in sources)),
            result_valid.eq(_or_all(is_[flag] & port.valid for flag, port, _ in sources)),
        ]
        # The load port's word, written the cycle after it is taken from a register; the
        # port's ready is a register too (see "the load port" below).
        load_word = Signal.like(self.load.payload)
        loading = Signal()
        load_region = load_word.addr[REGION_SHIFT:]
        load_index = load_word.addr[:REGION_SHIFT]
        v_addr = instr.dst + count
        # A NORM's y: from pass 2 with the writer's sums (y_out), else from pass 3 (out).
        y_valid, y_beat = (nq.y_out.valid, nq.y_out.y) if image.fused_sums else \
            (nq.out.valid, nq.out.payload.y)
        # A pair (two rows of i, f or g, or two residual sums of o_proj or down_proj): words
        # v_addr and v_addr + 1 of one row (v_addr is even: the vector starts at a multiple of
        # W >= 2, the count goes by 2).
        if paired_rows:
            pair_write = Signal()
            result2 = Signal(signed(ACT_BITS))
            m.d.comb += [
                pair_write.eq(is_["pair"] & ~is_["glu"] & result_valid),
                result2.eq(Mux(is_["add"], residual.out.payload[1], rq_out.payload.data2)),
            ]
        with m.If(is_["norm"] & y_valid):              # a whole beat of y
            m.d.comb += [v_wr.addr.eq(v_addr >> wbits), v_wr.data.eq(y_beat),
                         v_wr.en.eq((1 << W) - 1)]
            m.d.sync += count.eq(count + W)
        if paired_rows:
            with m.Elif(pair_write):
                pair_word = Cat(result, result2)
                m.d.comb += [v_wr.addr.eq(v_addr >> wbits),
                             v_wr.data.eq(Cat(*[pair_word] * (W // 2))),
                             v_wr.en.eq(Const(0b11, W) << v_addr[:wbits])]
                m.d.sync += count.eq(count + 2)
        with m.Elif(result_valid):                          # one element
            m.d.comb += [v_wr.addr.eq(v_addr >> wbits), v_wr.data.eq(Cat(*[result] * W)),
                         v_wr.en.eq(Const(1, W) << v_addr[:wbits] if W > 1 else 1)]
            m.d.sync += count.eq(count + 1)

        # --- sums of squares of the written vectors (fused_sums) -------------------------
        # Every vector that a NORM, BITLINEAR or HEAD normalizes (its `src`) was written whole
        # by an earlier instruction of the step (EngineImage checks it): the writer squares
        # what it writes to those addresses and keeps one sum per address, so NormQuant needs
        # no pass of its own over the vector. Stages: 0 the written words (an element in word
        # 0, a pair in words 0 and 1), 1-2 the squares, 3 the beat's sum, then the address's
        # sum.
        if image.fused_sums:
            sums = image.norm_sources
            sum_bits = len(nq.ss)
            beat_write = is_["norm"] & nq.y_out.valid
            elem_write = ~beat_write & result_valid
            hits = Cat(*[instr.dst == base for base in sums])
            sq_x = [Signal(signed(32), name=f"sq_x{j}") for j in range(W)]
            sq_v = [Signal(name=f"sq_v{k}") for k in range(5)]
            sq_hit = [Signal(len(sums), name=f"sq_hit{k}") for k in range(4)]
            sq_first = [Signal(name=f"sq_first{k}") for k in range(4)]
            m.d.sync += [
                sq_v[0].eq((beat_write | elem_write) & hits.any()),
                sq_hit[0].eq(hits), sq_first[0].eq(count == 0),
                *(sq_v[k].eq(sq_v[k - 1]) for k in range(1, len(sq_v))),
                *(sq_hit[k].eq(sq_hit[k - 1]) for k in range(1, len(sq_hit))),
                *(sq_first[k].eq(sq_first[k - 1]) for k in range(1, len(sq_first))),
            ]
            squares = []
            for j in range(W):
                word = nq.y_out.y[j]
                if j == 0:
                    elem = result
                elif j == 1 and paired_rows:
                    elem = Mux(pair_write, result2, 0)
                else:
                    elem = 0
                m.d.sync += sq_x[j].eq(Mux(beat_write, word, elem))
                square, partial, final = split_mul(sq_x[j], sq_x[j], f"sq{j}")
                m.d.sync += [*partial, *final]
                squares.append(square)
            while len(squares) > 1:                 # a balanced adder tree
                squares = [a + b for a, b in zip(squares[0::2], squares[1::2])]
            beat_sq = Signal(sum_bits)
            m.d.sync += beat_sq.eq(squares[0])
            ss_regs = [Signal(sum_bits, name=f"ss{k}") for k in range(len(sums))]
            for k, reg in enumerate(ss_regs):
                with m.If(sq_v[3] & sq_hit[3][k]):
                    m.d.sync += reg.eq(Mux(sq_first[3], 0, reg) + beat_sq)
            ss_src = Signal(sum_bits)
            m.d.sync += ss_src.eq(_select(instr.src, sums, ss_regs))
            m.d.comb += [nq.ss.eq(ss_src), nq.ss_valid.eq(~Cat(*sq_v).any())]

        # --- the load port --------------------------------------------------------------
        # A word taken in cycle t is written in t + 1 from `load_word`: neither the link's
        # word nor the sequencer's state reach the write enables (tmem's staging register is
        # a row of words) in the cycle they change. `load_open`, the port's ready, is a
        # register: high only in a cycle where the sequencer is idle (it was idle a cycle
        # before and took no step), and no step is taken in a cycle a word is offered or
        # written, so every write lands while idle.
        load_open = Signal()
        m.d.sync += [
            load_open.eq((state == _State.IDLE) & ~(self.step.valid & self.step.ready)),
            load_word.eq(self.load.payload),
            loading.eq(self.load.valid & self.load.ready),
        ]
        m.d.comb += self.load.ready.eq(load_open)
        # prog, cmem, emb: a row of `words` words at a stride of `stride` (a power of two)
        # addresses, written a word at a time.
        for memory, region, words, stride in ((prog, "prog", PROG_WORDS, INSTR_WORDS),
                                              (emb, "emb", 1, 1)):
            port = memory.write_port(granularity=32) if words > 1 else memory.write_port()
            sub_bits = (stride - 1).bit_length()
            m.d.comb += [
                port.addr.eq(load_index >> sub_bits),
                port.data.eq(Cat(*[load_word.data] * words)),
            ]
            hit = loading & (load_region == REGION[region])
            if words > 1:
                # Words past `words` (the stride's padding) are dropped.
                m.d.comb += port.en.eq(Mux(hit, Const(1, words) << load_index[:sub_bits], 0))
            else:
                m.d.comb += port.en.eq(hit)
        # cmem: rows of W words of CMEM_BITS (the low bits of the load port's words), written
        # whole when their last word arrives, the words before it held in `c_stage`, as tmem's
        # below: a write granule per word would take 3 of the block RAMs' 9-bit byte lanes a
        # word (12 a row of 4, 15 blocks for the default model), a whole row 11 (14 blocks).
        c_hit = loading & (load_region == REGION["cmem"])
        c_wr = cmem.write_port()
        if W > 1:
            c_stage = Signal(CMEM_BITS * (W - 1))
            for k in range(W - 1):
                with m.If(c_hit & (load_index[:wbits] == k)):
                    m.d.sync += c_stage.word_select(k, CMEM_BITS).eq(load_word.data[:CMEM_BITS])
            m.d.comb += [c_wr.addr.eq(load_index >> wbits),
                         c_wr.data.eq(Cat(c_stage, load_word.data[:CMEM_BITS])),
                         c_wr.en.eq(c_hit & (load_index[:wbits] == W - 1))]
        else:
            m.d.comb += [c_wr.addr.eq(load_index), c_wr.data.eq(load_word.data[:CMEM_BITS]),
                         c_wr.en.eq(c_hit)]
        # tmem: rows of chunk_bits (not a multiple of 32 with 1.6-bit packing), written whole
        # when their last word arrives, the words before it held in `t_stage`: a memory with
        # no write granularity fills the block RAMs' 36-bit columns. The load port delivers a
        # row's words in order (EngineImage.load_words; the link applies chunks in order).
        t_words = -(-image.chunk_bits // 32)
        t_sub_bits = (image.tmem_words - 1).bit_length()
        t_sub = load_index[:t_sub_bits] if t_sub_bits else Const(0, 1)
        t_hit = loading & (load_region == REGION["tmem"])
        t_stage = Signal(32 * max(1, t_words - 1))
        for k in range(t_words - 1):
            with m.If(t_hit & (t_sub == k)):
                m.d.sync += t_stage.word_select(k, 32).eq(load_word.data)
        t_wr = tmem.write_port()
        m.d.comb += [
            t_wr.addr.eq(load_index >> t_sub_bits),
            t_wr.data.eq(Cat(t_stage[:32 * (t_words - 1)], load_word.data)),
            t_wr.en.eq(t_hit & (t_sub == t_words - 1)),
        ]

        if self._debug:
            peek = vmem.read_port()
            peek_word = Signal(range(W))
            m.d.sync += peek_word.eq(self.peek_addr[:wbits] if W > 1 else 0)
            m.d.comb += [peek.addr.eq(self.peek_addr >> wbits),
                         self.peek_data.eq(peek.data.word_select(peek_word, 32))]

        # --- the sequencer --------------------------------------------------------------
        m.d.comb += self.step.ready.eq((state == _State.IDLE) & ~loading & ~self.load.valid)
        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.reset_state):
                    m.d.sync += h_valid.eq(0)
                with m.If(self.step.valid):
                    m.d.sync += [token.eq(self.step.payload.token), emit.eq(self.step.payload.emit),
                                 pc.eq(0), cycles.eq(1), state.eq(_State.FETCH)]
            with m.Case(_State.FETCH):
                m.d.sync += state.eq(_State.DECODE)
            with m.Case(_State.DECODE):
                m.d.sync += [instr.eq(decoded), count.eq(0), q_count.eq(0),
                             *(is_[name].eq(flag) for name, flag in op_flags(decoded).items())]
                with m.If(decoded.emit_only & ~emit):
                    m.d.sync += [pc.eq(pc + 1), state.eq(_State.FETCH)]
                with m.Elif(decoded.op == Op.END):
                    m.d.sync += state.eq(_State.IDLE)
                with m.Else():
                    m.d.sync += state.eq(_State.START)
            with m.Case(_State.START):
                m.d.comb += start.eq(1)
                m.d.sync += state.eq(Mux(is_["embed"], _State.EMB_M, _State.RUN))
            with m.Case(_State.EMB_M):
                m.d.comb += rc.out.ready.eq(1)
                with m.If(rc.out.valid):
                    m.d.sync += mult.eq(rc.out.payload.data[:15])
                    m.d.comb += start.eq(1)
                    m.d.sync += state.eq(_State.RUN)
            with m.Case(_State.RUN):
                with m.If(is_["tern"]):
                    with m.If(q_count >= instr.n_in):
                        m.d.sync += state.eq(_State.TERN)
                with m.Elif(count >= instr.n_in):
                    with m.If(is_["mlgru_h"]):
                        m.d.sync += h_valid.eq(h_valid | (Const(1, len(h_valid)) << instr.layer))
                    m.d.sync += [pc.eq(pc + 1), state.eq(_State.FETCH)]
            with m.Case(_State.TERN):
                m.d.sync += state.eq(_State.WAIT_T)
            with m.Case(_State.WAIT_T):
                with m.If(is_["head"]):
                    with m.If(self.token.valid & self.token.ready):
                        m.d.sync += [pc.eq(pc + 1), state.eq(_State.FETCH)]
                with m.Elif(count == Mux(instr.glu, instr.n_out >> 1, instr.n_out)):
                    m.d.sync += [pc.eq(pc + 1), state.eq(_State.FETCH)]
        return m
