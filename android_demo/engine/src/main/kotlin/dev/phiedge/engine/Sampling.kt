package dev.phiedge.engine

import java.util.SplittableRandom

/** Mirrors runtime/sampling.py: greedy, or repetition penalty -> temperature -> top-k -> top-p -> draw. */
data class SamplingConfig(
    val temperature: Double = 0.7,  // 0: greedy (argmax)
    val topK: Int = 0,  // keep the k most likely tokens; 0: all
    val topP: Double = 0.95,  // keep the smallest set whose probability reaches topP; 1: all
    val seed: Long? = null,  // null: a fresh seed each call
    val repetitionPenalty: Double = 1.0,  // > 1 discourages tokens already in the prompt or the reply (CTRL, HF)
) {
    init {
        require(temperature >= 0) { "temperature must be >= 0 (0 is greedy), got $temperature" }
        require(topK >= 0) { "top-k must be >= 0 (0 keeps every token), got $topK" }
        require(topP > 0 && topP <= 1) { "top-p must be in (0, 1] (1 keeps every token), got $topP" }
        require(repetitionPenalty > 0) { "repetition penalty must be > 0 (1 is off), got $repetitionPenalty" }
    }

    val greedy: Boolean get() = temperature == 0.0
}

/** (candidate ids, their probabilities), most likely first, after temperature, top-k and top-p. */
fun probabilities(logits: FloatArray, config: SamplingConfig): Pair<IntArray, DoubleArray> {
    val n = logits.size
    val k = if (config.topK == 0) n else minOf(config.topK, n)
    // Order by logit, ties by id (numpy's stable argsort / lexsort), so top-k 1 picks what argmax picks.
    val order = (0 until n).sortedWith { a, b ->
        val c = logits[b].toDouble().compareTo(logits[a].toDouble())
        if (c != 0) c else a.compareTo(b)
    }
    var candidates = IntArray(k) { order[it] }
    val scaled = DoubleArray(k) { logits[candidates[it]].toDouble() / config.temperature }
    var probs = DoubleArray(k) { Math.exp(scaled[it] - scaled[0]) }
    var sum = 0.0
    for (p in probs) sum += p
    for (i in probs.indices) probs[i] /= sum
    if (config.topP < 1) {
        var cum = 0.0
        var keep = probs.size
        for (i in probs.indices) {  // numpy searchsorted (left): first cumulative sum >= top_p; that token stays
            cum += probs[i]
            if (cum >= config.topP) { keep = i + 1; break }
        }
        keep = minOf(keep, probs.size)
        var kept = 0.0
        for (i in 0 until keep) kept += probs[i]
        candidates = candidates.copyOf(keep)
        probs = DoubleArray(keep) { probs[it] / kept }
    }
    return candidates to probs
}

/** Draws tokens for one generation call; the same seed and logits give the same tokens (on the JVM). */
class Sampler(val config: SamplingConfig) {
    private val rng = SplittableRandom(config.seed ?: System.nanoTime())
    private var seen: BooleanArray? = null
    private val pending = ArrayList<Int>()

    /** Records context tokens (the prompt, then each new token) for the repetition penalty. */
    fun observe(ids: IntArray) {
        if (config.repetitionPenalty != 1.0) for (id in ids) pending.add(id)
    }

    /** CTRL's penalty as transformers applies it: positive logits divided by it, negative ones multiplied. */
    fun penalize(logits: FloatArray): FloatArray {
        if (config.repetitionPenalty == 1.0) return logits
        val s = seen ?: BooleanArray(logits.size).also { seen = it }
        for (id in pending) s[id] = true
        pending.clear()
        val penalty = config.repetitionPenalty.toFloat()  // numpy: a float32 row and a Python float stay float32
        val out = logits.copyOf()
        for (i in out.indices) if (s[i]) out[i] = if (out[i] > 0) out[i] / penalty else out[i] * penalty
        return out
    }

    fun sample(row: FloatArray): Int {
        val logits = penalize(row)
        if (config.greedy) return argmax(logits)
        val (candidates, probs) = probabilities(logits, config)
        if (candidates.size == 1) return candidates[0]
        val r = rng.nextDouble()
        var cum = 0.0
        for (i in probs.indices) {  // searchsorted (right): the first cumulative sum above r
            cum += probs[i]
            if (cum > r) return candidates[i]
        }
        return candidates[probs.size - 1]  // the cumulative sum may end a hair below 1
    }

    companion object {
        /** The first index of the largest value, as numpy.argmax. */
        fun argmax(x: FloatArray): Int {
            var best = 0
            for (i in 1 until x.size) if (x[i] > x[best]) best = i
            return best
        }
    }
}
