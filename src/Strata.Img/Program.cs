// Temporary entry point; the qemu-img compatible command line replaces it.
Console.Error.WriteLine("strata-img: no commands yet");
return 1;
