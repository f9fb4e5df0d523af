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

/** One loaded package (runtime/pipeline.py). Not thread-safe: one generation at a time; cancel from any thread. */
class TextGenerator(val manifest: Manifest, backend: Backend, val tokenizer: Tokenizer, var loadS: Double? = null) {
    /** The package's backend; LongRoPE packages recompute a sequence that crosses the switch (LongRope.kt). */
    val backend: Backend = manifest.ropeSwitch?.let { LongRopeBackend(backend, it) } ?: backend
    val eosTokenId: Int? = manifest.eosTokenId
    val stopTokenIds: List<Int> = manifest.stopTokenIds
    internal var cacheOwner: Any? = null  // the chat session whose conversation the cache holds, if any

    fun encode(text: String): IntArray = tokenizer.encode(text)

    fun decode(ids: IntArray): String = tokenizer.decode(ids)

    /** Continues [prompt] (through [template]) from an empty cache; the template's stop strings apply. */
    fun generate(prompt: String, config: GenerationConfig = GenerationConfig(), template: String = "completion",
                 onText: ((String) -> Unit)? = null, cancel: CancelToken? = null, clock: Clock = ProcClock): Generation {
        require(prompt.isNotEmpty()) { "the prompt is empty; type some text to continue" }
        val ids = encode(manifest.applyTemplate(template, prompt))
        val stops = (config.stop + manifest.templateStops(template)).distinct()
        backend.truncate(0)
        return generateIds(ids, config.copy(stop = stops), onText, cancel, clock)
    }

    /** Continues the cache as it is with [ids] (truncate the backend first for a fresh sequence). */
    fun generateIds(ids: IntArray, config: GenerationConfig = GenerationConfig(), onText: ((String) -> Unit)? = null,
                    cancel: CancelToken? = null, clock: Clock = ProcClock): Generation {
        cacheOwner = null
        return dev.phiedge.engine.generateIds(backend, ids, config, stopTokenIds, ::decode, onText, cancel, loadS, clock)
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
