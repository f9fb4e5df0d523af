package dev.phiedge.demo

import android.os.Bundle
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.Switch
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.viewModels
import dev.phiedge.android.EngineOptions
import dev.phiedge.engine.GenerationConfig
import dev.phiedge.engine.SamplingConfig

/**
 * Prompt box, prompt format (the package manifest's templates), streaming output that follows the text, Stop,
 * New chat, the context plan and the stats line. A thin client: state and the model live in [ChatViewModel]
 * (kept across rotation), which uses the phiedge library. Leaving the app (not rotating) stops a generation:
 * there is no foreground service, so nothing runs unseen in the background.
 */
class MainActivity : ComponentActivity() {
    private val vm: ChatViewModel by viewModels()

    private lateinit var prompt: EditText
    private lateinit var packageChoice: Spinner
    private lateinit var template: Spinner
    private lateinit var threads: EditText
    private lateinit var maxNewTokens: EditText
    private lateinit var temperature: EditText
    private lateinit var lowPower: Switch

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        prompt = findViewById(R.id.prompt)
        packageChoice = findViewById(R.id.package_choice)
        template = findViewById(R.id.template)
        threads = findViewById(R.id.threads)
        maxNewTokens = findViewById(R.id.max_new_tokens)
        temperature = findViewById(R.id.temperature)
        lowPower = findViewById(R.id.low_power)
        val output = findViewById<TextView>(R.id.output)
        val scroll = findViewById<ScrollView>(R.id.output_scroll)
        val stats = findViewById<TextView>(R.id.stats)
        val plan = findViewById<TextView>(R.id.context_plan)
        val run = findViewById<Button>(R.id.run)
        val stop = findViewById<Button>(R.id.stop)
        val reset = findViewById<Button>(R.id.reset)

        packageChoice.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, Packages.list(this))
        packageChoice.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) {
                options()?.let { vm.select(packageChoice.selectedItem as String, it) }
            }
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
        vm.templates.observe(this) { names ->
            val keep = template.selectedItem as String?
            template.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, names)
            names.indexOf(keep).takeIf { it >= 0 }?.let { template.setSelection(it) }
        }
        vm.output.observe(this) { text ->
            output.text = text
            scroll.post { scroll.fullScroll(View.FOCUS_DOWN) }  // follow the text as it streams
        }
        vm.stats.observe(this) { stats.text = it }
        vm.plan.observe(this) { plan.text = it }
        vm.running.observe(this) { busy ->
            run.isEnabled = !busy
            stop.isEnabled = busy
        }
        run.setOnClickListener { start() }
        stop.setOnClickListener { vm.cancel() }
        reset.setOnClickListener { vm.resetChat() }
    }

    private fun options(): EngineOptions? = try {
        EngineOptions(threads = threads.text.toString().toInt(), lowPower = lowPower.isChecked)
    } catch (e: Exception) {
        vm.onError(e)
        null
    }

    private fun start() {
        val options = options() ?: return
        val format = template.selectedItem as String? ?: return vm.onError(IllegalStateException("no prompt format yet"))
        val config = try {
            val t = temperature.text.toString().toDouble()
            GenerationConfig(maxNewTokens = maxNewTokens.text.toString().toInt(),
                sampling = SamplingConfig(temperature = t, topP = if (t == 0.0) 1.0 else 0.95))
        } catch (e: Exception) {
            return vm.onError(e)
        }
        vm.start(packageChoice.selectedItem as String, format, prompt.text.toString(), options, config)
    }

    override fun onStop() {
        super.onStop()
        if (!isChangingConfigurations) vm.cancel()  // backgrounded: stop rather than run unseen with no service
    }
}
