package dev.phiedge.engine

import java.io.File

/**
 * What the UI sees of the engine: one generator and these callbacks (like executorch's LlmCallback).
 * onStats receives the JSON object of runtime.stats (keys in [StatsKeys]), the same one benchmarks/ writes.
 */
interface GenerationCallback {
    fun onText(piece: String)
    fun onStats(stats: Map<String, Any?>)
    fun onError(error: Throwable)
}

/** A call that asked not to wait (wait = false) found the model generating for another caller. */
class ModelBusyException(message: String) : IllegalStateException(message)

/**
 * One loaded package (runtime/pipeline.py): one KV cache, so one generation at a time.
 *
 * Safe to share between threads: generate, generateIds and every ChatSession call hold the model's lock for the
 * whole call, so a second caller waits until the first has finished (or, with wait = false, gets
 * ModelBusyException at once). Cancel from any thread with the call's CancelToken (and Backend.interrupt).
 */
class TextGenerator(val manifest: Manifest, backend: Backend, val tokenizer: Tokenizer, var loadS: Double? = null) {
    /** The package's backend; LongRoPE and sliding-window packages recompute what their caches cannot hold in
     *  place (Recompute.kt). */
    val backend: Backend = RecomputingBackend.wrap(backend, manifest)
    val eosTokenId: Int? = manifest.eosTokenId
    val stopTokenIds: List<Int> = manifest.stopTokenIds
    internal var cacheOwner: Any? = null  // the chat session whose conversation the cache holds, if any
    private val lock = java.util.concurrent.locks.ReentrantLock()
    private var measuredCost: Double? = null

    /** c of the verify cost line on this device (NgramDrafter.verifyCost), measured once per TextGenerator (not
     *  kept across app launches, unlike runtime/pipeline.py's disk cache); DEFAULT_COST where it cannot be. */
    fun draftCost(): Double {
        if (measuredCost == null) measuredCost = NgramDrafter.verifyCost(backend)
        return measuredCost ?: NgramDrafter.DEFAULT_COST
    }

    /** [config] with its draft cost measured where drafting asks for it and it is not given. */
    fun resolve(config: GenerationConfig): GenerationConfig =
        if (config.draft != "none" && config.draftCost == null) config.copy(draftCost = draftCost()) else config

    /** Embedding rows the tokenizer has no token for (published checkpoints pad their vocabulary: phi-2 has 51200
     *  rows for 50295 tokens): never sampled, as runtime/pipeline.py's undecodable(). Null when there are none. */
    val suppress: BooleanArray? = BooleanArray(this.backend.vocabSize) { !tokenizer.hasToken(it) }
        .takeIf { mask -> mask.any { it } }

    /** Runs [body] holding the model's lock: generation calls from other threads wait until it returns. */
    fun <T> exclusive(wait: Boolean = true, body: () -> T): T {
        if (wait) lock.lock() else if (!lock.tryLock()) throw ModelBusyException(
            "the model is generating for another caller; wait for it (wait = true) or load the package again for a " +
                "second, independent model")
        try {
            return body()
        } finally {
            lock.unlock()
        }
    }

    fun encode(text: String): IntArray = tokenizer.encode(text)

    fun decode(ids: IntArray): String = tokenizer.decode(ids)

    /** Continues [prompt] (through [template]) from an empty cache; the template's stop strings apply. */
    fun generate(prompt: String, config: GenerationConfig = GenerationConfig(), template: String = "completion",
                 onText: ((String) -> Unit)? = null, cancel: CancelToken? = null, clock: Clock = ProcClock,
                 wait: Boolean = true): Generation {
        require(prompt.isNotEmpty()) { "the prompt is empty; type some text to continue" }
        val ids = encode(manifest.applyTemplate(template, prompt))
        val stops = (config.stop + manifest.templateStops(template)).distinct()
        return exclusive(wait) {
            backend.truncate(0)
            generateIds(ids, config.copy(stop = stops), onText, cancel, clock)
        }
    }

    /** Continues the cache as it is with [ids] (truncate the backend first for a fresh sequence). */
    fun generateIds(ids: IntArray, config: GenerationConfig = GenerationConfig(), onText: ((String) -> Unit)? = null,
                    cancel: CancelToken? = null, clock: Clock = ProcClock, wait: Boolean = true): Generation =
        exclusive(wait) {
            cacheOwner = null
            dev.phiedge.engine.generateIds(backend, ids, resolve(config), stopTokenIds, ::decode, onText, cancel, loadS, clock,
                suppress = suppress)
        }

    /** [generate] reporting through [callback]: text as it comes, then stats; any failure goes to onError. */
    fun generate(prompt: String, config: GenerationConfig, template: String, callback: GenerationCallback,
                 cancel: CancelToken? = null) {
        try {
            val out = generate(prompt, config, template, callback::onText, cancel)
            callback.onStats(out.stats.toJson())
        } catch (e: Exception) {
            callback.onError(e)
        }
    }

    fun chat(template: String = "chat", dropOldest: Boolean = false) = ChatSession(this, template, dropOldest)

    companion object {
        /** Loads a package folder with a backend made by [openBackend] (OrtBackend on the phone). */
        fun load(folder: File, verify: Boolean = false, clock: Clock = ProcClock,
                 openBackend: (Manifest) -> Backend): TextGenerator {
            val t0 = clock.wallNanos()
            val manifest = Manifest.load(folder, verify)
            val tokenizer = Tokenizer.load(File(folder, manifest.tokenizerFile))
            val backend = openBackend(manifest)
            return TextGenerator(manifest, backend, tokenizer, (clock.wallNanos() - t0) * 1e-9)
        }
    }
}
