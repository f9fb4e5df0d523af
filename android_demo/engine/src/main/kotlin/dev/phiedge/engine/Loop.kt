package dev.phiedge.engine

/**
 * The one generation loop (runtime/loop.py): prefill, then sample -> show text -> check stops -> decode step.
 *
 *     prompt ids --prefill (chunks)--> logits --sample--> token --TextStream--> onText(piece)
 *                                        ^                  |
 *                                        +--- step([token]) + (unless a stop, EOS, maxNewTokens, full
 *                                                              cache or cancellation ends the call)
 *
 * The last sampled token is never fed back, so after a call the cache holds the prompt and all new tokens but
 * the last: backend.length == start + prompt.size + tokens.size - 1 (chat relies on it).
 */
data class GenerationConfig(
    val maxNewTokens: Int = 256,
    val sampling: SamplingConfig = SamplingConfig(),
    val stop: List<String> = emptyList(),  // matched on the decoded text and never shown
    val stopAtEos: Boolean = true,  // false: keep going past the end-of-text token (benchmarks)
    val prefillChunk: Int = 0,  // prefill at most this many tokens per step; 0: the whole prompt at once
) {
    init {
        require(maxNewTokens >= 1) { "max new tokens must be >= 1, got $maxNewTokens" }
        require(prefillChunk >= 0) { "prefill chunk must be >= 0 (0: whole prompt), got $prefillChunk" }
    }
}

class Generation(
    val text: String,  // what was shown: stop strings and anything after them left out
    val tokens: List<Int>,  // every sampled token, the EOS that ended the call included
    val finishReason: FinishReason,
    val stats: GenerationStats,
)

fun checkFits(backend: Backend, nPrompt: Int) {
    val free = backend.capacity - backend.length
    if (nPrompt > free) {
        val used = if (backend.length > 0) " (${backend.length} already in use)" else ""
        throw IllegalArgumentException("the prompt has $nPrompt tokens but the context holds ${backend.capacity}$used; " +
            "shorten the prompt or load the package with a larger context")
    }
}

/** Feeds the prompt in chunks of [chunk] tokens (0: all at once); the logits after it, null if cancelled. */
fun prefill(backend: Backend, ids: IntArray, chunk: Int = 0, cancel: CancelToken? = null): FloatArray? {
    require(ids.isNotEmpty()) { "the prompt has no tokens; pass some text" }
    checkFits(backend, ids.size)
    val step = if (chunk == 0) ids.size else chunk
    var logits: FloatArray? = null
    for (start in ids.indices step step) {
        if (cancel?.isSet() == true) return null
        logits = backend.step(ids.copyOfRange(start, minOf(start + step, ids.size)))
    }
    return logits
}

/** Continues the backend's cache with [prompt]; [decode] (ids -> text) enables text and stop strings. */
fun generateIds(
    backend: Backend, prompt: IntArray, config: GenerationConfig = GenerationConfig(),
    stopTokenIds: Collection<Int> = emptyList(),  // any of them ends the call (<|end|>, <|endoftext|>, ...)
    decode: Decode? = null, onText: ((String) -> Unit)? = null, cancel: CancelToken? = null, loadS: Double? = null,
    clock: Clock = ProcClock,
): Generation {
    val t0 = clock.wallNanos()
    val c0 = clock.cpuNanos()
    val sampler = Sampler(config.sampling)
    val stops = stopTokenIds.toHashSet()
    val stream = decode?.let { TextStream(it, config.stop, context = prompt) }
    require(config.stop.isEmpty() || stream != null) { "stop strings need text: pass decode (the tokenizer's decode)" }
    sampler.observe(prompt)
    var logits = prefill(backend, prompt, config.prefillChunk, cancel)
    val tPrefill = clock.wallNanos()
    var t1 = -1L
    var c1 = -1L
    val tokens = ArrayList<Int>()
    var finish = FinishReason.CANCELLED
    while (logits != null) {
        val token = sampler.sample(logits)
        sampler.observe(intArrayOf(token))
        tokens.add(token)
        if (t1 < 0) { t1 = clock.wallNanos(); c1 = clock.cpuNanos() }
        if (config.stopAtEos && token in stops) { finish = FinishReason.EOS; break }
        if (stream != null) {
            val piece = stream.push(token)
            if (piece.isNotEmpty()) onText?.invoke(piece)
            if (stream.stopped) { finish = FinishReason.STOP; break }
        }
        if (tokens.size >= config.maxNewTokens) { finish = FinishReason.LENGTH; break }
        if (backend.length >= backend.capacity) { finish = FinishReason.CONTEXT; break }
        if (cancel?.isSet() == true) break
        logits = backend.step(intArrayOf(token))
    }
    if (stream != null) {
        val piece = stream.flush()
        if (piece.isNotEmpty()) onText?.invoke(piece)
    }
    val t2 = clock.wallNanos()
    val c2 = clock.cpuNanos()
    val firstT = if (t1 >= 0) t1 else t2
    val firstC = if (t1 >= 0) c1 else c2
    val s = 1e-9
    val stats = GenerationStats(promptTokens = prompt.size, newTokens = tokens.size,
        ttftS = if (t1 >= 0) (t1 - t0) * s else null, prefillS = (tPrefill - t0) * s, decodeS = (t2 - firstT) * s,
        cpuS = (c2 - c0) * s, decodeCpuS = (c2 - firstC) * s, peakRssBytes = clock.peakRssBytes(),
        finishReason = finish, loadS = loadS)
    return Generation(stream?.text ?: "", tokens, finish, stats)
}
