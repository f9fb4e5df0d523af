package dev.phiedge.demo

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OnnxValue
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import dev.phiedge.engine.Backend
import dev.phiedge.engine.Contract
import dev.phiedge.engine.Manifest
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.LongBuffer

/** Engine options (runtime/engine.py EngineOptions): deployment knobs, apart from the model's shape. */
data class EngineOptions(
    val threads: Int = 1,  // intra-op threads; 0 lets ONNX Runtime use every core (measured: 1 is fastest on the demo)
    val lowPower: Boolean = true,  // worker threads sleep between ops instead of spinning
    val context: Int? = null,  // KV cache positions; null: the package's max_length
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
 *                      the SAME tensor (1, kv_heads, capacity, head_dim) per pair, over one direct buffer: the
 *                      present output is pinned to the past input, so GroupQueryAttention writes positions
 *                      [P, P + S) in place and the cache is never copied
 *     logits_to_keep   int64 (1,)                   format 2 "last" packages: 1, or S for a verify step (stepAll)
 *     logits           float32 (1, K, vocab), pinned to a preallocated buffer ((1, S, vocab) for "all" packages)
 *
 * Not thread-safe: one sequence, one caller (cancel between steps through the loop's CancelToken).
 */
class OrtBackend(private val manifest: Manifest, options: EngineOptions = EngineOptions()) : Backend {
    private val contract: Contract = manifest.contract
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val session: OrtSession
    override val capacity: Int = options.context ?: manifest.maxLength
    override val vocabSize: Int get() = contract.vocabSize
    override var length: Int = 0
        private set

    private val cache: List<OnnxTensor>  // one per (past, present) pair, layer by layer, key before value
    private val mask: LongBuffer = ByteBuffer.allocateDirect(capacity * 8).order(ByteOrder.nativeOrder()).asLongBuffer()
    private val logits = HashMap<Int, Pair<FloatBuffer, OnnxTensor>>()

    init {
        require(capacity <= manifest.maxLength) {
            "context $capacity exceeds the package's max_length ${manifest.maxLength} (the length its rotary tables " +
                "cover); pass at most ${manifest.maxLength}"
        }
        val so = OrtSession.SessionOptions().apply {
            setIntraOpNumThreads(options.threads)
            setInterOpNumThreads(1)
            setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL)
            setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
            val spin = if (options.lowPower) "0" else "1"
            addConfigEntry("session.intra_op.allow_spinning", spin)
            addConfigEntry("session.inter_op.allow_spinning", spin)
        }
        manifest.checkOnnxruntime(BuildConfig.ONNXRUNTIME_VERSION)  // the onnxruntime-android the app was built with
        session = try {
            env.createSession(manifest.modelFile.absolutePath, so)  // model.onnx.data is found beside it
        } catch (e: ai.onnxruntime.OrtException) {
            throw IllegalArgumentException("ONNX Runtime cannot load ${manifest.modelFile}: ${e.message}; the package " +
                "may be corrupt (verify its checksums) or need a newer onnxruntime-android", e)
        }
        checkIo()
        for (i in 0 until capacity) mask.put(i, 1L)
        val (type, bytes) = when (contract.kvDtype) {
            "float16" -> OnnxJavaType.FLOAT16 to 2
            else -> OnnxJavaType.FLOAT to 4
        }
        val shape = contract.kvShape(capacity)  // (1, kv_heads, capacity, head_dim)
        val elements = shape.fold(1L) { a, b -> a * b }.toInt()
        cache = contract.kvNames().map {
            val buffer = ByteBuffer.allocateDirect(elements * bytes).order(ByteOrder.nativeOrder())
            OnnxTensor.createTensor(env, buffer, shape, type)  // a direct buffer is wrapped, not copied
        }
    }

    private fun checkIo() {
        val got = session.inputNames + session.outputNames
        val want = setOf(Contract.INPUT_IDS, Contract.ATTENTION_MASK, Contract.LOGITS) +
            contract.kvNames().flatMap { listOf(it.first, it.second) } +
            (if (contract.logitsToKeep) setOf(Contract.LOGITS_TO_KEEP) else emptySet())
        if (got != want) throw IllegalArgumentException(
            "${manifest.modelFile} does not match its manifest's I/O contract (missing ${want - got}, unexpected " +
                "${got - want}); re-export the package")
    }

    private fun logitsBuffer(rows: Int): Pair<FloatBuffer, OnnxTensor> = logits.getOrPut(rows) {
        val buffer = ByteBuffer.allocateDirect(rows * vocabSize * 4).order(ByteOrder.nativeOrder()).asFloatBuffer()
        buffer to OnnxTensor.createTensor(env, buffer, longArrayOf(1, rows.toLong(), vocabSize.toLong()))
    }

    override val canStepAll: Boolean get() = contract.canStepAll

    override fun step(ids: IntArray): FloatArray = run(ids, 1).last()

    override fun stepAll(ids: IntArray): Array<FloatArray> {
        require(canStepAll) { "${manifest.folder} returns logits for one position per step (package format 1); " +
            "re-export it with this version of the project to verify drafted tokens" }
        return run(ids, ids.size)
    }

    /** One session run appending [ids]; the logits of its last [keep] positions. */
    private fun run(ids: IntArray, keep: Int): Array<FloatArray> {
        val n = ids.size
        val past = length
        require(n >= 1) { "a step needs at least one token id" }
        require(past + n <= capacity) { "$n more tokens do not fit: $past of $capacity cache positions are in use" }
        val rows = if (contract.logits == "last") keep else n
        val (buffer, logitsTensor) = logitsBuffer(rows)
        val idBuffer = ByteBuffer.allocateDirect(n * 8).order(ByteOrder.nativeOrder()).asLongBuffer()
        for (id in ids) idBuffer.put(id.toLong())
        idBuffer.rewind()
        val maskView = (mask.duplicate().position(0).limit(past + n) as LongBuffer).slice()
        OnnxTensor.createTensor(env, idBuffer, longArrayOf(1, n.toLong())).use { inputIds ->
            OnnxTensor.createTensor(env, maskView, longArrayOf(1, (past + n).toLong())).use { attention ->
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
                session.run(inputs, pinned).close()  // closing the result leaves pinned outputs open
            }
        }
        length = past + n
        val view = buffer.duplicate()
        view.position(buffer.capacity() - keep * vocabSize)
        return Array(keep) { FloatArray(vocabSize).also { row -> view.get(row) } }  // (keep, vocab)
    }

    private val keepTensors = HashMap<Int, OnnxTensor>()  // logits_to_keep values: 1 and each verify length

    private fun keepTensor(keep: Int): OnnxTensor = keepTensors.getOrPut(keep) {
        OnnxTensor.createTensor(env, LongBuffer.wrap(longArrayOf(keep.toLong())), longArrayOf(1))
    }

    override fun truncate(length: Int) {
        require(length in 0..this.length) { "cannot truncate a cache of ${this.length} positions to $length" }
        this.length = length  // positions past it are overwritten by the next step; GQA never reads them
    }

    override fun close() {
        cache.forEach { it.close() }
        logits.values.forEach { it.second.close() }
        keepTensors.values.forEach { it.close() }
        session.close()
    }
}
