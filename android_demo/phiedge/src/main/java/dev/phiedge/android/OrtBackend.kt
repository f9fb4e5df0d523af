package dev.phiedge.android

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OnnxValue
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import dev.phiedge.engine.Backend
import dev.phiedge.engine.Contract
import dev.phiedge.engine.KvGrowth
import dev.phiedge.engine.Manifest
import dev.phiedge.engine.StepInterrupted
import java.nio.ByteBuffer
import java.nio.FloatBuffer
import java.nio.LongBuffer

/** Engine options (runtime/engine.py EngineOptions): deployment knobs, apart from the model's shape. */
data class EngineOptions(
    val threads: Int = 1,  // intra-op threads; 0 lets ONNX Runtime use every core (measured: 1 is fastest on the demo)
    val lowPower: Boolean = true,  // worker threads sleep between ops instead of spinning
    val context: Int? = null,  // KV cache positions wanted; null: the package's max_length, if memory allows (ContextPlan)
) {
    init {
        require(threads >= 0) { "threads must be >= 0 (0: one per core), got $threads" }
        require(context == null || context >= 1) { "context must be >= 1 position, got $context" }
    }
}

/**
 * The engine's Backend on ONNX Runtime's Java API, with the package's I/O contract (runtime/engine.py does the
 * same with IOBinding). Each step passes:
 *
 *     input_ids        int64 (1, S)                 the new tokens
 *     attention_mask   int64 (1, P + S)             ones; P = positions already in the cache
 *     past_key_values.L.key / .value  and  present.L.key / .value
 *                      the SAME tensor (1, kv_heads, allocated, kv_width) per pair, over one native buffer from
 *                      [memory]: the present output is pinned to the past input, so GroupQueryAttention writes
 *                      positions [P, P + S) in place; the buffers grow with the sequence (KvGrowth: at least
 *                      doubled up to [capacity]), the P positions held copied once into the larger buffer; a
 *                      sliding-window package's is allocated once (KvGrowth.windowBuffer) and evicted within
 *     logits_to_keep   int64 (1,)                   format 2 "last" packages: 1, or S for a verify step (stepAll)
 *     logits           float32 (1, K, vocab), pinned to one native buffer that grows to the most rows a step
 *                      has asked for (K = S for "all" packages: prefill in chunks to bound it)
 *
 * [capacity] is the most positions the cache may hold (ContextPlan chooses it from the device's free memory);
 * nothing is allocated for positions not yet held. The backend owns [memory] and frees it in [close]. Not thread-safe: one sequence, one caller; [interrupt] is the one call
 * another thread may make.
 */
class OrtBackend(
    private val manifest: Manifest,
    options: EngineOptions = EngineOptions(),
    override val capacity: Int = options.context ?: manifest.maxLength,
    private val memory: NativeMemory = DirectMemory(),
) : Backend {
    private val contract: Contract = manifest.contract
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val session: OrtSession
    override val vocabSize: Int get() = contract.vocabSize
    override var length: Int = 0
        private set

    private val cache = ArrayList<OnnxTensor>()  // one per (past, present) pair, layer by layer, key before value
    private val cacheBuffers = ArrayList<ByteBuffer>()
    private var allocated = 0  // positions each cache buffer holds now
    // A sliding-window package's buffer (runtime/contract.py): allocated whole on the first step, evicted within by
    // the graph (GroupQueryAttention refuses a buffer smaller than the window); null: the cache grows to [capacity]
    private val windowBuffer: Int? = manifest.contract.window?.let { KvGrowth.windowBuffer(it, capacity) }
    private val kvType: OnnxJavaType = when (contract.kvStorage) {
        "float32" -> OnnxJavaType.FLOAT
        "float16" -> OnnxJavaType.FLOAT16
        "int8" -> OnnxJavaType.INT8
        "uint8" -> OnnxJavaType.UINT8
        else -> throw IllegalArgumentException("KV cache dtype ${contract.kvStorage} is not one this engine knows")
    }
    private val rowBytes = contract.kvWidth * Contract.KV_DTYPES.getValue(contract.kvDtype).itemBytes  // one position
    private val ids: LongBuffer  // capacity int64: a step's input_ids are a prefix view of it
    private val mask: LongBuffer  // capacity ones
    private val small = ArrayList<ByteBuffer>()
    private var logitsBuffer: ByteBuffer? = null  // the most rows asked so far, reused by every step
    private var logitsTensor: OnnxTensor? = null
    private var logitsRows = 0
    private val keepTensors = HashMap<Int, OnnxTensor>()  // logits_to_keep values: 1 and each verify length
    private val runOptions = OrtSession.RunOptions()
    private val lock = Any()  // orders interrupt() against the start and end of a run
    private var running = false
    @Volatile private var terminated = false  // interrupt() set the run options' terminate flag

    init {
        require(capacity in 1..manifest.maxLength) {
            "context $capacity is outside 1..${manifest.maxLength} (the length the package's rotary tables cover)"
        }
        try {
            manifest.checkOnnxruntime(env.version)  // the onnxruntime-android the app runs with
        } catch (e: IllegalArgumentException) {
            runOptions.close()
            throw e
        }
        session = OrtSession.SessionOptions().use { so ->  // the session keeps its own copy of the options
            so.setIntraOpNumThreads(options.threads)
            so.setInterOpNumThreads(1)
            so.setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL)
            so.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
            val spin = if (options.lowPower) "0" else "1"
            so.addConfigEntry("session.intra_op.allow_spinning", spin)
            so.addConfigEntry("session.inter_op.allow_spinning", spin)
            try {
                env.createSession(manifest.modelFile.absolutePath, so)  // model.onnx.data is found beside it
            } catch (e: OrtException) {
                runOptions.close()
                throw IllegalArgumentException("ONNX Runtime cannot load ${manifest.modelFile}: ${e.message}; the " +
                    "package may be corrupt (verify its checksums) or need a newer onnxruntime-android", e)
            }
        }
        try {
            checkIo()
            ids = smallBuffer(capacity * 8).asLongBuffer()
            mask = smallBuffer(capacity * 8).asLongBuffer()
            for (i in 0 until capacity) mask.put(i, 1L)
            require(contract.kvHeads.toLong() * (windowBuffer ?: capacity) * rowBytes <= Int.MAX_VALUE) {
                "one layer's KV cache at context $capacity exceeds 2 GiB; choose a smaller context" }
        } catch (e: Throwable) {
            close()  // the session and every buffer made so far
            throw e
        }
    }

    private fun smallBuffer(bytes: Int): ByteBuffer = memory.allocate(bytes).also { small.add(it) }

    /** Room for [needed] positions: each buffer replaced by a larger one holding the first [length] positions of
     *  every head, one (layer, kind) at a time, so growing holds at most one extra buffer. */
    private fun reserve(needed: Int) {
        val grown = windowBuffer ?: KvGrowth.grownCapacity(allocated, needed, capacity)
        if (grown == allocated) return
        val shape = contract.kvShape(grown)  // (1, kv_heads, grown, kv_width)
        val held = length * rowBytes
        for (i in contract.kvNames().indices) {
            val buffer = memory.allocate(contract.kvHeads * grown * rowBytes)
            if (i < cache.size) {
                val old = cacheBuffers[i]
                for (h in 0 until contract.kvHeads) {  // BNSH: a head's positions are contiguous
                    val from = old.duplicate().position(h * allocated * rowBytes).limit(h * allocated * rowBytes + held)
                    buffer.duplicate().position(h * grown * rowBytes).put(from as ByteBuffer)
                }
                cache[i].close()
                memory.release(old)
                cacheBuffers[i] = buffer
                cache[i] = OnnxTensor.createTensor(env, buffer, shape, kvType)  // wrapped, not copied
            } else {
                cacheBuffers.add(buffer)
                cache.add(OnnxTensor.createTensor(env, buffer, shape, kvType))
            }
        }
        allocated = grown
    }

    /** Bytes the KV cache holds now (for the app's memory line). */
    val cacheBytes: Long get() = allocated.toLong() * contract.kvBytesPerPosition

    private fun checkIo() {
        val got = session.inputNames + session.outputNames
        val want = setOf(Contract.INPUT_IDS, Contract.ATTENTION_MASK, Contract.LOGITS) +
            contract.kvNames().flatMap { listOf(it.first, it.second) } +
            (if (contract.logitsToKeep) setOf(Contract.LOGITS_TO_KEEP) else emptySet())
        if (got != want) throw IllegalArgumentException(
            "${manifest.modelFile} does not match its manifest's I/O contract (missing ${want - got}, unexpected " +
                "${got - want}); re-export the package")
    }

    /** The pinned logits output for [rows] rows: one buffer, grown (never one per length), one tensor per shape. */
    private fun logitsFor(rows: Int): Pair<FloatBuffer, OnnxTensor> {
        val bytes = rows * vocabSize * 4
        if (logitsBuffer == null || logitsBuffer!!.capacity() < bytes) {
            logitsTensor?.close()
            logitsTensor = null
            logitsBuffer?.let { memory.release(it) }
            logitsBuffer = null
            logitsBuffer = memory.allocate(bytes)
        }
        val floats = logitsBuffer!!.asFloatBuffer()
        if (logitsTensor == null || logitsRows != rows) {
            logitsTensor?.close()
            logitsTensor = null
            val view = (floats.duplicate().limit(rows * vocabSize) as FloatBuffer).slice()
            logitsTensor = OnnxTensor.createTensor(env, view, longArrayOf(1, rows.toLong(), vocabSize.toLong()))
            logitsRows = rows
        }
        return floats to logitsTensor!!
    }

    override val canStepAll: Boolean get() = contract.canStepAll

    override fun step(ids: IntArray): FloatArray = run(ids, 1).last()

    override fun stepAll(ids: IntArray, keep: Int): Array<FloatArray> {
        require(canStepAll) { "${manifest.folder} returns logits for one position per step (package format 1); " +
            "re-export it with this version of the project to verify drafted tokens" }
        require(keep in 1..ids.size) { "keep must be in 1..${ids.size}, got $keep" }
        return run(ids, keep)
    }

    /** Appends [ids]; the logits of the last [keep]. A "last" package takes a long step in runs whose attention
     *  scratch is bounded (KvGrowth.stepRows); a step that crosses the LongRoPE switch gets a mask padded with zeros
     *  past it in each run, so every run uses the long tables as one run would (runtime/engine.py does the same). */
    private fun run(ids: IntArray, keep: Int): Array<FloatArray> {
        val n = ids.size
        val past = length
        require(n >= 1) { "a step needs at least one token id" }
        require(past + n <= capacity) { "$n more tokens do not fit: $past of $capacity cache positions are in use" }
        reserve(past + n)
        if (contract.logits != "last" || n <= KvGrowth.SHORT) return runOnce(ids, keep, 0)  // decode: never split
        val switch = manifest.ropeSwitch
        val width = if (switch != null && past <= switch && switch < past + n) switch + 1 else 0
        val rows = KvGrowth.stepRows(manifest.heads, allocated)
        var start = 0
        try {
            while (n - start > maxOf(rows, keep)) {  // the rows whose logits are kept go in the last run
                val size = minOf(rows, n - start - keep)
                runOnce(ids.copyOfRange(start, start + size), 1, width)
                start += size
            }
            return runOnce(if (start == 0) ids else ids.copyOfRange(start, n), keep, 0)
        } catch (e: Throwable) {
            length = past  // a step is whole or not at all (Stop included); what the runs wrote is never read
            throw e
        }
    }

    /** One session run appending [ids]; the logits of its last [keep] positions. The attention mask is [width]
     *  wide at least, zeros past the positions held. */
    private fun runOnce(ids: IntArray, keep: Int, width: Int): Array<FloatArray> {
        val n = ids.size
        val past = length
        val rows = if (contract.logits == "last") keep else n
        val (floats, logitsTensor) = logitsFor(rows)
        for (i in 0 until n) this.ids.put(i, ids[i].toLong())
        val idView = (this.ids.duplicate().position(0).limit(n) as LongBuffer).slice()
        val maskWidth = maxOf(past + n, width)
        val maskView = if (maskWidth == past + n) (mask.duplicate().position(0).limit(past + n) as LongBuffer).slice()
            else LongBuffer.wrap(LongArray(maskWidth) { if (it < past + n) 1L else 0L })
        OnnxTensor.createTensor(env, idView, longArrayOf(1, n.toLong())).use { inputIds ->
            OnnxTensor.createTensor(env, maskView, longArrayOf(1, maskWidth.toLong())).use { attention ->
                val inputs = HashMap<String, OnnxTensor>()
                val pinned = HashMap<String, OnnxValue>()
                inputs[Contract.INPUT_IDS] = inputIds
                inputs[Contract.ATTENTION_MASK] = attention
                if (contract.logitsToKeep) inputs[Contract.LOGITS_TO_KEEP] = keepTensor(keep)
                pinned[Contract.LOGITS] = logitsTensor
                for ((names, tensor) in contract.kvNames().zip(cache)) {
                    inputs[names.first] = tensor
                    pinned[names.second] = tensor
                }
                synchronized(lock) {
                    if (terminated) { runOptions.setTerminate(false); terminated = false }
                    running = true
                }
                try {
                    session.run(inputs, emptySet(), pinned, runOptions).close()  // closing leaves pinned outputs open
                } catch (e: OrtException) {
                    if (terminated) throw StepInterrupted("stopped during a step of $n tokens", e)
                    throw e
                } finally {
                    synchronized(lock) { running = false }
                }
            }
        }
        length = past + n
        val view = floats.duplicate()
        view.position((rows - keep) * vocabSize)
        return Array(keep) { FloatArray(vocabSize).also { row -> view.get(row) } }  // (keep, vocab)
    }

    private fun keepTensor(keep: Int): OnnxTensor = keepTensors.getOrPut(keep) {
        val buffer = smallBuffer(8).asLongBuffer().put(0, keep.toLong())
        OnnxTensor.createTensor(env, buffer, longArrayOf(1))
    }

    override fun interrupt() {
        synchronized(lock) {
            if (!running) return  // between steps the loop's CancelToken is enough
            terminated = true
            runOptions.setTerminate(true)  // the run in progress throws; the next run resets it
        }
    }

    override fun truncate(length: Int) {
        require(length in 0..this.length) { "cannot truncate a cache of ${this.length} positions to $length" }
        this.length = length  // positions past it are overwritten by the next step; GQA never reads them
    }

    override fun close() {
        cache.forEach { it.close() }
        cache.clear()
        logitsTensor?.close()
        logitsTensor = null
        keepTensors.values.forEach { it.close() }
        keepTensors.clear()
        session.close()
        runOptions.close()
        memory.close()  // every KV, logits and input buffer
    }
}
